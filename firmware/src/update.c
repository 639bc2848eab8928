/* See update.h. Every choice mirrors a named Python function so the bytes agree:
 * Compressor.compress / _select (global top-k), quantize_values (INT8, FLOAT32), within_bound,
 * index_coding.choose/encode, values.plan_int8_rice/pack_int8_rice, TensorUpdate.to_cbor. */
#include "update.h"

#include <math.h>
#include <string.h>

/* The smallest bfloat16 (a float32 whose low 16 bits are zero) >= a positive finite scale: what Python devices
   send (edge_runtime/compress/quantize.py bfloat16_up), so the update's bytes stay identical to theirs. */
static float bfloat16_up(float scale) {
    uint32_t word;
    memcpy(&word, &scale, sizeof word);
    if (word & 0xFFFFu)
        word = (word | 0xFFFFu) + 1u;
    memcpy(&scale, &word, sizeof scale);
    return scale;
}

static float acc[UPD_MAX_PARAMS];     /* delta + residual, clipped: what the selection sees */
static float scratch[UPD_MAX_PARAMS]; /* magnitudes during selection, then the kept values' codes */
static uint8_t keep[UPD_MAX_PARAMS / 8];
static uint16_t gaps_buf[2 * UPD_MAX_PARAMS]; /* positions' gaps, then value magnitudes */

uint32_t upd_buffer_bytes(void) { return sizeof acc + sizeof scratch + sizeof keep + sizeof gaps_buf; }

static bool kept(uint32_t i) { return keep[i >> 3] & (1u << (i & 7)); }

void upd_begin(upd_state *st, uint8_t value_coding)
{
    memset(st, 0, sizeof *st);
    st->value_coding = value_coding;
    st->below_clip = -1;
}

bool upd_add(upd_state *st, uint32_t tensor, uint32_t numel, const float *delta)
{
    if (st->nparts == UPD_MAX_TENSORS || numel > UPD_MAX_PARAMS - st->total)
        return false;
    upd_part *p = &st->parts[st->nparts++];
    p->tensor = tensor;
    p->numel = numel;
    p->offset = st->total;
    memcpy(acc + st->total, delta, numel * sizeof(float));
    st->total += numel;
    return true;
}

/* Residual blob: u32 count, then per tensor u32 tensor, u32 numel, numel float32 (little-endian). */
void upd_apply_residual(upd_state *st, const uint8_t *blob, uint32_t len)
{
    uint32_t count, at = 4;
    if (blob == NULL || len < 4)
        return;
    memcpy(&count, blob, 4);
    for (uint32_t i = 0; i < count && len - at >= 8; i++) {
        uint32_t tensor, numel;
        memcpy(&tensor, blob + at, 4);
        memcpy(&numel, blob + at + 4, 4);
        at += 8;
        if ((len - at) / 4 < numel)
            return;
        for (uint32_t j = 0; j < st->nparts; j++) {
            upd_part *p = &st->parts[j];
            if (p->tensor != tensor || p->numel != numel)
                continue;
            for (uint32_t e = 0; e < numel; e++) {
                float r;
                memcpy(&r, blob + at + 4 * e, 4);
                acc[p->offset + e] += r;
            }
        }
        at += 4 * numel;
    }
}

/* k-th largest of scratch[0..n) (1-based k), by quickselect on a copy in place. */
static float kth_largest(float *v, uint32_t n, uint32_t k)
{
    uint32_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[(lo + hi) / 2];
        uint32_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot)
                i++;
            while (v[j] < pivot)
                j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return v[want];
    }
    return v[want];
}

static double sent_norm(const upd_state *st, const float *codes)
{
    double total = 0;
    uint32_t c = 0;
    for (uint32_t j = 0; j < st->nparts; j++) {
        const upd_part *p = &st->parts[j];
        for (uint32_t e = 0; e < p->nnz; e++, c++) {
            double d = st->value_coding == VC_INT8 ? (double)(codes[c] * p->scale) : (double)codes[c];
            total += d * d;
        }
    }
    return sqrt(total);
}

bool upd_compress(upd_state *st, double density, double clip)
{
    uint32_t n = st->total;
    double sq = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!isfinite(acc[i]))
            return false;
        sq += (double)acc[i] * (double)acc[i];
    }
    st->norm = sqrt(sq);
    if (clip > 0) {
        st->below_clip = st->norm <= clip;
        if (!st->below_clip)
            for (uint32_t i = 0; i < n; i++)
                acc[i] = (float)((double)acc[i] * (clip / st->norm));
    }
    /* global top-k: k = max(1, round(density x numel)), Python's round (half to even) */
    double want = nearbyint(density * (double)n);
    uint32_t k = want < 1 ? 1 : (want > n ? n : (uint32_t)want);
    memset(keep, 0, sizeof keep);
    for (uint32_t i = 0; i < n; i++)
        scratch[i] = fabsf(acc[i]);
    float thr = k == n ? 0.0f : kth_largest(scratch, n, k);
    uint32_t taken = 0;
    for (uint32_t i = 0; i < n; i++)
        if (fabsf(acc[i]) > thr) {
            keep[i >> 3] |= (uint8_t)(1u << (i & 7));
            taken++;
        }
    for (uint32_t i = 0; i < n && taken < k; i++)
        if (!kept(i) && fabsf(acc[i]) == thr) {
            keep[i >> 3] |= (uint8_t)(1u << (i & 7));
            taken++;
        }
    /* quantise each tensor's kept values (quantize_values), codes in scratch in index order */
    uint32_t c = 0;
    for (uint32_t j = 0; j < st->nparts; j++) {
        upd_part *p = &st->parts[j];
        float peak = 0;
        uint32_t first = c;
        for (uint32_t e = 0; e < p->numel; e++)
            if (kept(p->offset + e)) {
                float v = acc[p->offset + e];
                if (fabsf(v) > peak)
                    peak = fabsf(v);
                scratch[c++] = v;
            }
        p->nnz = c - first;
        p->scale = 1.0f;
        if (st->value_coding == VC_INT8) {
            float scale = peak > 0 ? bfloat16_up((float)((double)peak / 127.0)) : 1.0f;
            p->scale = scale;
            for (uint32_t e = first; e < c; e++) {
                float q = nearbyintf(scratch[e] / scale);
                scratch[e] = q > 127 ? 127 : (q < -127 ? -127 : q);
            }
        }
    }
    /* within_bound: what is sent stays under the clip as the gateway measures it */
    if (clip > 0) {
        for (int round = 0; round < 8; round++) {
            double norm = sent_norm(st, scratch);
            if (norm <= clip)
                break;
            double factor = clip / norm * (1 - 1e-6);
            uint32_t at = 0;
            for (uint32_t j = 0; j < st->nparts; j++) {
                upd_part *p = &st->parts[j];
                if (st->value_coding == VC_INT8)
                    p->scale = (float)((double)p->scale * factor);
                else
                    for (uint32_t e = 0; e < p->nnz; e++)
                        scratch[at + e] = (float)((double)scratch[at + e] * factor);
                at += p->nnz;
            }
        }
    }
    return true;
}

uint32_t upd_entries(const upd_state *st)
{
    uint32_t n = 0;
    for (uint32_t j = 0; j < st->nparts; j++)
        n += st->parts[j].nnz > 0;
    return n;
}

/* -- codings --------------------------------------------------------------------------------------------- */
static uint64_t rice_bytes(const uint16_t *g, uint32_t n, uint32_t k)
{
    uint64_t q = 0;
    for (uint32_t i = 0; i < n; i++)
        q += g[i] >> k;
    return (q + n + 7) / 8 + ((uint64_t)n * k + 7) / 8;
}

uint32_t upd_best_rice_k(const uint16_t *g, uint32_t n)
{
    if (n == 0)
        return 0;
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += g[i];
    double m = sum / n * 0.69;
    int guess = (int)log2(m > 1.0 ? m : 1.0);
    int lo = guess - 2 < 0 ? 0 : guess - 2, hi = guess + 3 > 30 ? 30 : guess + 3;
    uint32_t best = (uint32_t)lo;
    uint64_t best_size = rice_bytes(g, n, (uint32_t)lo);
    for (int k = lo + 1; k <= hi; k++) {
        uint64_t s = rice_bytes(g, n, (uint32_t)k);
        if (s < best_size) {
            best_size = s;
            best = (uint32_t)k;
        }
    }
    return best;
}

static uint32_t bit_length(uint32_t v)
{
    uint32_t b = 0;
    while (v) {
        b++;
        v >>= 1;
    }
    return b;
}

static uint64_t varint_bytes(const uint16_t *g, uint32_t n)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t bits = bit_length(g[i]);
        total += bits <= 7 ? 1 : (bits + 6) / 7;
    }
    return total;
}

typedef struct {
    cbor_writer *w;
    uint8_t byte;
    uint8_t used;
} bitw;

static void bit_put(bitw *b, unsigned bit) /* most significant bit first (np.packbits) */
{
    b->byte = (uint8_t)(b->byte | (bit ? 0x80u >> b->used : 0));
    if (++b->used == 8) {
        cbor_w_raw(b->w, &b->byte, 1);
        b->byte = 0;
        b->used = 0;
    }
}

static void bit_flush(bitw *b)
{
    if (b->used)
        cbor_w_raw(b->w, &b->byte, 1);
    b->byte = 0;
    b->used = 0;
}

static void rice_write(cbor_writer *w, const uint16_t *g, uint32_t n, uint32_t k)
{
    bitw b = {w, 0, 0};
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t q = g[i] >> k; q; q--)
            bit_put(&b, 1);
        bit_put(&b, 0);
    }
    bit_flush(&b);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t s = k; s; s--)
            bit_put(&b, (g[i] >> (s - 1)) & 1);
    bit_flush(&b);
}

/* One tensor's kept positions as gaps into gaps_buf; returns nnz. */
static uint32_t tensor_gaps(const upd_part *p)
{
    uint32_t n = 0;
    int64_t prev = -1;
    for (uint32_t e = 0; e < p->numel; e++)
        if (kept(p->offset + e)) {
            gaps_buf[n++] = (uint16_t)((int64_t)e - prev - 1);
            prev = e;
        }
    return n;
}

/* Writes the tensor's codes (int8, in position order; zeros filled in when dense). */
static int8_t code_at(const float *codes, uint32_t i) { return (int8_t)codes[i]; }

static void encode_tensor(const upd_state *st, const upd_part *p, const float *codes, cbor_writer *w)
{
    uint32_t nnz = tensor_gaps(p);
    uint32_t value_bits = st->value_coding == VC_INT8 ? 8 : 32;
    uint32_t k = upd_best_rice_k(gaps_buf, nnz);
    uint64_t bits[4] = {
        (uint64_t)(p->numel - nnz) * value_bits,
        (uint64_t)((p->numel + 7) / 8) * 8,
        varint_bytes(gaps_buf, nnz) * 8,
        (rice_bytes(gaps_buf, nnz, k) + 1) * 8,
    };
    int coding = IC_DENSE;
    for (int c = 1; c < 4; c++)
        if (bits[c] < bits[coding])
            coding = c;
    bool dense = coding == IC_DENSE;
    uint32_t count = dense ? p->numel : nnz;

    /* INT8: the Rice layout of the values when it is smaller (plan_int8_rice) */
    bool rice_values = false;
    uint32_t vk = 0, base = 0;
    if (st->value_coding == VC_INT8 && count) {
        /* magnitudes - base, as gaps for the size plan: reuse gaps_buf after the positions are written */
        uint32_t minmag = 127;
        uint32_t ci = 0;
        for (uint32_t e = 0; e < p->numel; e++) {
            bool in = kept(p->offset + e);
            if (!in && !dense)
                continue;
            int8_t q = in ? code_at(codes, ci++) : 0;
            uint32_t m = (uint32_t)(q < 0 ? -q : q);
            if (m < minmag)
                minmag = m;
        }
        base = minmag;
        (void)base;
    }

    uint32_t entries = 5; /* tensor, numel, index coding, nnz, value coding */
    entries += !dense;    /* positions */
    entries += coding == IC_RICE;
    /* values and scale decided below; write positions into a scratch writer is not possible (one buffer), so
     * compute everything needed for the header first */
    uint32_t mags_n = 0;
    uint64_t rice_val_bytes = 0;
    if (st->value_coding == VC_INT8 && count) {
        /* fill mags after the positions' gaps (positions are re-derived when written) */
        uint16_t *mags = gaps_buf + nnz;
        uint32_t ci = 0;
        for (uint32_t e = 0; e < p->numel; e++) {
            bool in = kept(p->offset + e);
            if (!in && !dense)
                continue;
            int8_t q = in ? code_at(codes, ci++) : 0;
            mags[mags_n++] = (uint16_t)((uint32_t)(q < 0 ? -q : q) - base);
        }
        vk = upd_best_rice_k(mags, mags_n);
        rice_val_bytes = (count + 7) / 8 + rice_bytes(mags, mags_n, vk) + 3;
        rice_values = rice_val_bytes < count;
    }
    if (st->value_coding == VC_INT8)
        entries += 1; /* scale */
    entries += 1;     /* values */
    if (rice_values)
        entries += 2;

    cbor_w_head(w, CBOR_MAP, entries);
    cbor_w_uint(w, 0);
    cbor_w_uint(w, p->tensor);
    cbor_w_uint(w, 1);
    cbor_w_uint(w, p->numel);
    cbor_w_uint(w, 2);
    cbor_w_uint(w, (uint64_t)coding);
    if (!dense) {
        cbor_w_uint(w, 3);
        if (coding == IC_BITMAP) {
            uint32_t nb = (p->numel + 7) / 8;
            cbor_w_head(w, CBOR_BYTES, nb);
            for (uint32_t b = 0; b < nb; b++) {
                uint8_t byte = 0;
                for (uint32_t i = 0; i < 8 && b * 8 + i < p->numel; i++)
                    byte = (uint8_t)(byte | (kept(p->offset + b * 8 + i) ? 1u << i : 0)); /* little bit order */
                cbor_w_raw(w, &byte, 1);
            }
        } else if (coding == IC_VARINT) {
            cbor_w_head(w, CBOR_BYTES, varint_bytes(gaps_buf, nnz));
            for (uint32_t i = 0; i < nnz; i++) {
                uint32_t g = gaps_buf[i];
                do {
                    uint8_t byte = (uint8_t)(g & 0x7F);
                    g >>= 7;
                    if (g)
                        byte |= 0x80;
                    cbor_w_raw(w, &byte, 1);
                } while (g);
            }
        } else {
            cbor_w_head(w, CBOR_BYTES, rice_bytes(gaps_buf, nnz, k));
            rice_write(w, gaps_buf, nnz, k);
        }
    }
    if (coding == IC_RICE) {
        cbor_w_uint(w, 4);
        cbor_w_uint(w, k);
    }
    cbor_w_uint(w, 5);
    cbor_w_uint(w, count);
    cbor_w_uint(w, 6);
    cbor_w_uint(w, rice_values ? VC_INT8_RICE : st->value_coding);
    if (st->value_coding == VC_INT8) {
        cbor_w_uint(w, 7);
        cbor_w_float(w, p->scale);
    }
    cbor_w_uint(w, 8);
    if (rice_values) {
        cbor_w_head(w, CBOR_BYTES, rice_val_bytes - 3);
        bitw sb = {w, 0, 0};
        uint32_t ci = 0;
        uint8_t byte = 0, used = 0;
        (void)sb;
        for (uint32_t e = 0; e < p->numel; e++) { /* sign bits, little bit order */
            bool in = kept(p->offset + e);
            if (!in && !dense)
                continue;
            int8_t q = in ? code_at(codes, ci++) : 0;
            byte = (uint8_t)(byte | (q < 0 ? 1u << used : 0));
            if (++used == 8) {
                cbor_w_raw(w, &byte, 1);
                byte = 0;
                used = 0;
            }
        }
        if (used)
            cbor_w_raw(w, &byte, 1);
        rice_write(w, gaps_buf + nnz, mags_n, vk);
        cbor_w_uint(w, 9);
        cbor_w_uint(w, vk);
        cbor_w_uint(w, 10);
        cbor_w_uint(w, base);
    } else if (st->value_coding == VC_INT8) {
        cbor_w_head(w, CBOR_TAG, 72);
        cbor_w_head(w, CBOR_BYTES, count);
        uint32_t ci = 0;
        for (uint32_t e = 0; e < p->numel; e++) {
            bool in = kept(p->offset + e);
            if (!in && !dense)
                continue;
            uint8_t b = (uint8_t)(in ? code_at(codes, ci++) : 0);
            cbor_w_raw(w, &b, 1);
        }
    } else { /* FLOAT32, tag 85, little-endian */
        cbor_w_head(w, CBOR_TAG, 85);
        cbor_w_head(w, CBOR_BYTES, (uint64_t)count * 4);
        uint32_t ci = 0;
        for (uint32_t e = 0; e < p->numel; e++) {
            bool in = kept(p->offset + e);
            if (!in && !dense)
                continue;
            float v = in ? codes[ci++] : 0.0f;
            uint8_t le[4];
            uint32_t bits32;
            memcpy(&bits32, &v, 4);
            for (int i = 0; i < 4; i++)
                le[i] = (uint8_t)(bits32 >> (8 * i));
            cbor_w_raw(w, le, 4);
        }
    }
}

void upd_encode_tensors(const upd_state *st, cbor_writer *w)
{
    cbor_w_head(w, CBOR_ARRAY, upd_entries(st));
    uint32_t c = 0;
    for (uint32_t j = 0; j < st->nparts; j++) {
        const upd_part *p = &st->parts[j];
        if (p->nnz)
            encode_tensor(st, p, scratch + c, w);
        c += p->nnz;
    }
}

bool upd_residual_write(const upd_state *st, upd_put_fn put)
{
    uint32_t count = st->nparts;
    if (!put((const uint8_t *)&count, 4))
        return false;
    uint32_t c = 0;
    for (uint32_t j = 0; j < st->nparts; j++) {
        const upd_part *p = &st->parts[j];
        uint32_t head[2] = {p->tensor, p->numel};
        if (!put((const uint8_t *)head, 8))
            return false;
        for (uint32_t e = 0; e < p->numel; e++) {
            float r = acc[p->offset + e];
            if (kept(p->offset + e)) {
                float sent = st->value_coding == VC_INT8 ? scratch[c] * p->scale : scratch[c];
                r = r - sent;
                c++;
            }
            if (!put((const uint8_t *)&r, 4))
                return false;
        }
    }
    return true;
}
