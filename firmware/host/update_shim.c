/* A shared library of the firmware's update coding for tests/test_firmware_update.py, which compares its
 * bytes with edge_runtime's Compressor and TensorUpdate.to_cbor on the same deltas. */
#include <string.h>

#include "update.h"

static uint8_t *res_out;
static uint32_t res_len, res_cap;

static bool put(const uint8_t *data, uint32_t len)
{
    if (res_len + len > res_cap)
        return false;
    memcpy(res_out + res_len, data, len);
    res_len += len;
    return true;
}

/* Returns the CBOR array's length (0 on failure); *below gets the clip bit (-1 none). */
long shim_encode(const uint32_t *tensors, const uint32_t *numels, uint32_t n, const float *deltas,
                 const uint8_t *residual, uint32_t residual_len, double density, double clip, uint8_t coding,
                 uint8_t *out, uint32_t cap, uint8_t *res, uint32_t rcap, uint32_t *rlen, int *below)
{
    static upd_state st;
    upd_begin(&st, coding);
    uint32_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!upd_add(&st, tensors[i], numels[i], deltas + at))
            return 0;
        at += numels[i];
    }
    upd_apply_residual(&st, residual, residual_len);
    if (!upd_compress(&st, density, clip))
        return 0;
    cbor_writer w;
    cbor_w_init(&w, out, cap);
    upd_encode_tensors(&st, &w);
    res_out = res;
    res_cap = rcap;
    res_len = 0;
    if (w.overflow || !upd_residual_write(&st, put))
        return 0;
    *rlen = res_len;
    *below = st.below_clip;
    return (long)w.len;
}
