#include "cbor.h"

#include <string.h>

void cbor_w_init(cbor_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = false;
}

void cbor_w_raw(cbor_writer *w, const uint8_t *data, size_t len)
{
    if (w->overflow || w->cap - w->len < len) {
        w->overflow = true;
        return;
    }
    if (len)
        memcpy(w->buf + w->len, data, len);
    w->len += len;
}

void cbor_w_head(cbor_writer *w, uint8_t major, uint64_t v)
{
    uint8_t h[9];
    size_t n;
    uint8_t m = (uint8_t)(major << 5);
    if (v < 24) {
        h[0] = (uint8_t)(m | v);
        n = 1;
    } else if (v <= 0xFF) {
        h[0] = m | 24;
        h[1] = (uint8_t)v;
        n = 2;
    } else if (v <= 0xFFFF) {
        h[0] = m | 25;
        h[1] = (uint8_t)(v >> 8);
        h[2] = (uint8_t)v;
        n = 3;
    } else if (v <= 0xFFFFFFFFu) {
        h[0] = m | 26;
        for (int i = 0; i < 4; i++)
            h[1 + i] = (uint8_t)(v >> (24 - 8 * i));
        n = 5;
    } else {
        h[0] = m | 27;
        for (int i = 0; i < 8; i++)
            h[1 + i] = (uint8_t)(v >> (56 - 8 * i));
        n = 9;
    }
    cbor_w_raw(w, h, n);
}

void cbor_w_uint(cbor_writer *w, uint64_t v) { cbor_w_head(w, CBOR_UINT, v); }

void cbor_w_int(cbor_writer *w, int64_t v)
{
    if (v >= 0)
        cbor_w_head(w, CBOR_UINT, (uint64_t)v);
    else
        cbor_w_head(w, CBOR_NINT, (uint64_t)(-(v + 1)));
}

void cbor_w_bytes(cbor_writer *w, const uint8_t *data, size_t len)
{
    cbor_w_head(w, CBOR_BYTES, len);
    cbor_w_raw(w, data, len);
}

void cbor_w_text_n(cbor_writer *w, const char *text, size_t len)
{
    cbor_w_head(w, CBOR_TEXT, len);
    cbor_w_raw(w, (const uint8_t *)text, len);
}

void cbor_w_text(cbor_writer *w, const char *text) { cbor_w_text_n(w, text, strlen(text)); }

void cbor_w_bool(cbor_writer *w, bool v)
{
    uint8_t b = v ? 0xF5 : 0xF4;
    cbor_w_raw(w, &b, 1);
}

/* float32 bits -> float16 bits if the conversion is exact, else -1. */
static long exact_half(uint32_t f)
{
    uint32_t sign = (f >> 16) & 0x8000u;
    int32_t exp = (int32_t)((f >> 23) & 0xFF);
    uint32_t mant = f & 0x7FFFFFu;
    if (exp == 0xFF) /* inf / nan: cbor2 writes inf as half, nan as half 0x7e00 */
        return mant ? 0x7E00 : (long)(sign | 0x7C00u);
    if (exp == 0 && mant == 0)
        return (long)sign;
    if (exp == 0)
        return -1; /* float32 subnormals are far below half's range */
    int32_t e = exp - 127 + 15;
    if (e >= 31)
        return -1;
    if (e >= 1) {
        if (mant & 0x1FFFu)
            return -1;
        return (long)(sign | (uint32_t)e << 10 | mant >> 13);
    }
    /* half subnormal: value = m * 2^-24 with m < 1024 */
    int32_t shift = 14 - e; /* 1 - e + 13 */
    if (shift > 24)
        return -1;
    uint32_t full = mant | 0x800000u;
    if (full & ((1u << shift) - 1))
        return -1;
    return (long)(sign | full >> shift);
}

void cbor_w_float(cbor_writer *w, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    long half = exact_half(bits);
    uint8_t h[5];
    if (half >= 0) {
        h[0] = 0xF9;
        h[1] = (uint8_t)(half >> 8);
        h[2] = (uint8_t)half;
        cbor_w_raw(w, h, 3);
        return;
    }
    h[0] = 0xFA;
    for (int i = 0; i < 4; i++)
        h[1 + i] = (uint8_t)(bits >> (24 - 8 * i));
    cbor_w_raw(w, h, 5);
}

bool cbor_head(const uint8_t *p, const uint8_t *end, cbor_item *it)
{
    if (p >= end)
        return false;
    it->p = p;
    it->major = p[0] >> 5;
    it->info = p[0] & 0x1F;
    const uint8_t *q = p + 1;
    uint64_t v;
    if (it->info < 24) {
        v = it->info;
    } else if (it->info <= 27) {
        size_t n = (size_t)1 << (it->info - 24);
        if ((size_t)(end - q) < n)
            return false;
        v = 0;
        for (size_t i = 0; i < n; i++)
            v = v << 8 | q[i];
        q += n;
    } else {
        return false; /* reserved or indefinite length */
    }
    it->value = v;
    it->data = q;
    if (it->major == CBOR_BYTES || it->major == CBOR_TEXT) {
        if ((uint64_t)(end - q) < v)
            return false;
        q += v;
    }
    it->next = q;
    return true;
}

const uint8_t *cbor_skip(const uint8_t *p, const uint8_t *end, uint32_t max_items)
{
    uint64_t owed = 1;
    while (owed) {
        cbor_item it;
        if (max_items-- == 0 || !cbor_head(p, end, &it))
            return NULL;
        owed--;
        /* checked before it is added: a count near 2^64 would wrap what is owed (2 x 2^63 entries = 0) */
        if ((it.major == CBOR_ARRAY || it.major == CBOR_MAP) && it.value > max_items)
            return NULL;
        if (it.major == CBOR_ARRAY)
            owed += it.value;
        else if (it.major == CBOR_MAP)
            owed += 2 * it.value;
        else if (it.major == CBOR_TAG)
            owed += 1;
        if (owed > max_items)
            return NULL;
        p = it.next;
    }
    return p;
}

bool cbor_map_index(const uint8_t *p, const uint8_t *end, cbor_item *vals, unsigned nkeys)
{
    cbor_item m;
    for (unsigned k = 0; k < nkeys; k++)
        vals[k].p = NULL;
    if (!cbor_head(p, end, &m) || m.major != CBOR_MAP || m.value > 4096)
        return false;
    p = m.next;
    for (uint64_t i = 0; i < m.value; i++) {
        cbor_item key, val;
        if (!cbor_head(p, end, &key))
            return false;
        const uint8_t *vp = cbor_skip(p, end, 1u << 16);
        if (vp == NULL || !cbor_head(vp, end, &val))
            return false;
        const uint8_t *after = cbor_skip(vp, end, 1u << 16);
        if (after == NULL)
            return false;
        if (key.major == CBOR_UINT && key.value < nkeys)
            vals[key.value] = val;
        p = after;
    }
    return true;
}

bool cbor_get_uint(const cbor_item *it, uint64_t max, uint64_t *out)
{
    if (it->p == NULL || it->major != CBOR_UINT || it->value > max)
        return false;
    *out = it->value;
    return true;
}

bool cbor_get_bytes(const cbor_item *it, const uint8_t **data, size_t *len)
{
    if (it->p == NULL || it->major != CBOR_BYTES)
        return false;
    *data = it->data;
    *len = (size_t)it->value;
    return true;
}

bool cbor_get_text(const cbor_item *it, const char **text, size_t *len)
{
    if (it->p == NULL || it->major != CBOR_TEXT)
        return false;
    *text = (const char *)it->data;
    *len = (size_t)it->value;
    return true;
}

bool cbor_get_bool(const cbor_item *it, bool *out)
{
    if (it->p == NULL || it->major != CBOR_SIMPLE || (it->info != 20 && it->info != 21))
        return false;
    *out = it->info == 21;
    return true;
}

static double half_to_double(uint16_t h)
{
    int exp = (h >> 10) & 0x1F;
    int mant = h & 0x3FF;
    double v;
    if (exp == 0)
        v = mant / 16777216.0; /* 2^-24 */
    else if (exp == 31)
        v = mant ? 0.0 / 0.0 : 1.0 / 0.0;
    else {
        v = (double)(mant + 1024);
        int e = exp - 25;
        while (e > 0) {
            v *= 2;
            e--;
        }
        while (e < 0) {
            v /= 2;
            e++;
        }
    }
    return (h & 0x8000) ? -v : v;
}

bool cbor_get_number(const cbor_item *it, double *out)
{
    if (it->p == NULL)
        return false;
    if (it->major == CBOR_UINT) {
        *out = (double)it->value;
        return true;
    }
    if (it->major == CBOR_NINT) {
        *out = -1.0 - (double)it->value;
        return true;
    }
    if (it->major != CBOR_SIMPLE)
        return false;
    if (it->info == 25) {
        *out = half_to_double((uint16_t)it->value);
    } else if (it->info == 26) {
        uint32_t b = (uint32_t)it->value;
        float f;
        memcpy(&f, &b, 4);
        *out = f;
    } else if (it->info == 27) {
        uint64_t b = it->value;
        double d;
        memcpy(&d, &b, 8);
        *out = d;
    } else {
        return false;
    }
    return true;
}

bool cbor_get_typed(const cbor_item *it, const uint8_t *end, uint64_t tag, const uint8_t **data, size_t *len)
{
    cbor_item inner;
    if (it->p == NULL || it->major != CBOR_TAG || it->value != tag)
        return false;
    if (!cbor_head(it->next, end, &inner) || inner.major != CBOR_BYTES)
        return false;
    *data = inner.data;
    *len = (size_t)inner.value;
    return true;
}
