/* The gateway's intake hot path in C: the CBOR bounds scan and the decoding of an update's tensor streams.
 *
 * Why C: in CPython the scan is one interpreter step per CBOR item and the tensor streams are about sixty
 * numpy calls an update, most of a 1% update's intake (docs/performance.md, `tinyfed bench aggregate`).
 * Here both are one pass over the bytes.
 *
 * Why it can be trusted with hostile input: it only ever answers "well-formed" or "not what I take". It
 * never raises on input and never names a fault. Anything it does not take is handed back to the Python
 * code (edge_runtime/wire/scan.py, index_coding.py, values.py), which is the authority: it accepts or
 * refuses by name. So this module must be *sound* (whatever it takes, the Python decoder takes, with the
 * same result), and need not be complete. tests/test_cwire.py checks that on valid, mutated and random
 * bytes. Every read is bounds-checked against the buffer it reads; every count is checked against the
 * bytes that must carry it before anything is allocated.
 *
 * Building it is optional (setup.py): devices and Pis run the Python code alone, and so does a gateway
 * without a compiler, more slowly. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

/* ---- the scan (edge_runtime/wire/scan.py, the same rules) -------------------------------------------- */

static int allowed_tag(uint64_t tag)
{
    /* COSE_Sign1 and the RFC 8746 typed arrays tinyfed uses (scan.ALLOWED_TAGS) */
    switch (tag) {
    case 18: case 64: case 72: case 69: case 70: case 77: case 78: case 84: case 85: case 86:
        return 1;
    default:
        return 0;
    }
}

typedef struct {
    Py_ssize_t remaining;
    int in_map;
} Frame;

#define MAX_FRAMES 64

/* 1: one bounded, well-formed item that scan.scan accepts; 0: anything else (or max_depth beyond what this
 * scanner keeps, which it leaves to the Python scan). */
static int scan_ok(const uint8_t *data, Py_ssize_t size, Py_ssize_t max_items, Py_ssize_t max_depth)
{
    Frame stack[MAX_FRAMES];
    Py_ssize_t depth = 0, pos = 0, items = 0;
    Py_ssize_t remaining = 1;
    int in_map = 0;
    if (max_depth < 0 || max_depth > MAX_FRAMES || max_items < 0)
        return 0;
    for (;;) {
        if (!remaining) {
            if (!depth)
                break;
            depth--;
            remaining = stack[depth].remaining;
            in_map = stack[depth].in_map;
            continue;
        }
        int is_key = in_map && !(remaining & 1);
        remaining--;
        if (++items > max_items || pos >= size)
            return 0;
        uint8_t initial = data[pos++];
        int major = initial >> 5, info = initial & 0x1F;
        uint64_t arg = (uint64_t)info;
        if (info >= 24) {
            if (info > 27)
                return 0; /* reserved, or indefinite length */
            Py_ssize_t width = (Py_ssize_t)1 << (info - 24);
            if (width > size - pos)
                return 0;
            arg = 0;
            for (Py_ssize_t i = 0; i < width; i++)
                arg = (arg << 8) | data[pos + i];
            pos += width;
        }
        if (is_key && major != 0 && major != 1 && major != 3)
            return 0;
        uint64_t left = (uint64_t)(size - pos);
        if (major == 2 || major == 3) {
            if (arg > left)
                return 0;
            if (major == 3) {
                PyObject *text = PyUnicode_DecodeUTF8((const char *)data + pos, (Py_ssize_t)arg, "strict");
                if (!text) {
                    PyErr_Clear();
                    return 0;
                }
                Py_DECREF(text);
            }
            pos += (Py_ssize_t)arg;
        } else if (major == 4 || major == 5 || major == 6) {
            uint64_t children;
            if (major == 6) {
                if (!allowed_tag(arg))
                    return 0;
                children = 1;
            } else {
                if (arg > left)
                    return 0;
                children = major == 5 ? 2 * arg : arg;
            }
            if (children > left)
                return 0;
            if (children) {
                if (depth >= max_depth)
                    return 0;
                stack[depth].remaining = remaining;
                stack[depth].in_map = in_map;
                depth++;
                remaining = (Py_ssize_t)children;
                in_map = major == 5;
            }
        } else if (major == 7) {
            if (!(info == 20 || info == 21 || info == 22 || info == 25 || info == 26 || info == 27))
                return 0;
        }
    }
    return pos == size;
}

static PyObject *py_scan_ok(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer buf;
    PyObject *items_obj, *depth_obj;
    if (!PyArg_ParseTuple(args, "y*O!O!", &buf, &PyLong_Type, &items_obj, &PyLong_Type, &depth_obj))
        return NULL;
    Py_ssize_t max_items = PyLong_AsSsize_t(items_obj), max_depth = PyLong_AsSsize_t(depth_obj);
    if (PyErr_Occurred()) { /* limits beyond what this scanner counts: the Python scan decides */
        PyErr_Clear();
        max_items = max_depth = -1;
    }
    int ok = scan_ok((const uint8_t *)buf.buf, buf.len, max_items, max_depth);
    PyBuffer_Release(&buf);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(ok);
}

/* ---- the tensor streams (index_coding.py, values.py: the same layouts and checks) -------------------- */

enum { DELTA_VARINT = 2, GOLOMB_RICE = 3 };
enum { VALUE_INT8 = 2, VALUE_INT8_RICE = 4 };
#define MAX_RICE_K 30
#define MAX_VARINT_BYTES 5

#if !defined(__GNUC__)
#error "_cwire.c counts leading bits with GCC/Clang builtins; without them the Python path runs (setup.py)"
#endif

/* The 64 bits from byte `at` of p[0..len) on, big-endian; bytes past the end read as zero bits. */
static inline uint64_t load64(const uint8_t *p, Py_ssize_t len, Py_ssize_t at)
{
    uint64_t window = 0;
    if (at + 8 <= len) {
        memcpy(&window, p + at, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        window = __builtin_bswap64(window);
#endif
        return window;
    }
    for (int i = 0; i < 8; i++)
        window = (window << 8) | (at + i < len ? p[at + i] : 0);
    return window;
}

/* Big-endian bits [bit, bit + k) of p[0..len), k in 1..30 (the caller has checked they lie inside). */
static inline uint64_t read_bits(const uint8_t *p, Py_ssize_t len, Py_ssize_t bit, int k)
{
    return (load64(p, len, bit >> 3) << (bit & 7)) >> (64 - k);
}

/* n unary quotients (runs of 1 bits, each closed by a 0 bit) from bit *at on, every 0 bit before bit `end` of
 * p[0..len), each shifted left by k into out[0..n): what both Rice layouts (index_coding's and the compact
 * stream's) share. A run is counted 57 or more bits at a time; *at ends after the last closing 0 bit. */
static int unary_quotients(const uint8_t *p, Py_ssize_t len, Py_ssize_t end, Py_ssize_t *at, Py_ssize_t n, int k,
                           int64_t *out)
{
    Py_ssize_t bit = *at;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t q = 0;
        for (;;) {
            if (bit >= end)
                return 0;
            int shift = (int)(bit & 7), valid = 64 - shift;
            /* past the end read as 0 bits, so a run of 1s always ends inside the window or fills it */
            uint64_t inverted = ~(load64(p, len, bit >> 3) << shift);
            int run = inverted ? __builtin_clzll(inverted) : 64; /* 0: 64 ones from a byte boundary (clz(0) is UB) */
            if (run < valid) {
                if (bit + run >= end)
                    return 0; /* that 0 bit is past the part it must close */
                q += run;
                bit += run + 1;
                break;
            }
            q += valid;
            bit += valid;
        }
        if (q >= (INT64_C(1) << (62 - k)))
            return 0; /* a gap of 2**62 or more: past any tensor (and no shift may overflow) */
        out[i] = q << k;
    }
    *at = bit;
    return 1;
}

/* Gaps of n Golomb-Rice codes (all unary quotients, then all k-bit remainders, each part padded with zero
 * bits to a byte): what index_coding.decode_rice accepts, into out[0..n). A quotient is the run of 1 bits
 * before the next 0 bit, counted 57 or more bits at a time. */
static int rice_gaps(const uint8_t *p, Py_ssize_t len, Py_ssize_t n, int k, int64_t *out)
{
    if (k < 0 || k > MAX_RICE_K || n < 0)
        return 0;
    Py_ssize_t rem_bytes = (n * k + 7) >> 3;
    if (rem_bytes > len)
        return 0;
    Py_ssize_t unary_bytes = len - rem_bytes, unary_bits = unary_bytes * 8, bit = 0;
    if (!unary_quotients(p, unary_bytes, unary_bits, &bit, n, k, out))
        return 0;
    Py_ssize_t tail = unary_bits - bit; /* the padding: zero bits, fewer than 8 */
    if (tail >= 8 || (tail && (p[unary_bytes - 1] & ((1u << tail) - 1))))
        return 0;
    if (k) {
        const uint8_t *r = p + unary_bytes;
        Py_ssize_t pad = rem_bytes * 8 - n * k;
        if (pad && (r[rem_bytes - 1] & ((1u << pad) - 1)))
            return 0;
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] |= (int64_t)read_bits(r, rem_bytes, i * k, k);
    }
    return 1;
}

/* Gaps of n unsigned LEB128 values, exactly filling p[0..len), none longer than 5 bytes. */
static int varint_gaps(const uint8_t *p, Py_ssize_t len, Py_ssize_t n, int64_t *out)
{
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t value = 0;
        for (int b = 0;; b++) {
            if (b >= MAX_VARINT_BYTES || pos >= len)
                return 0;
            uint8_t byte = p[pos++];
            value |= (int64_t)(byte & 0x7F) << (7 * b);
            if (!(byte & 0x80))
                break;
        }
        out[i] = value;
    }
    return pos == len;
}

/* One tensor's head, as _read_tensors_batched checked and packed it. */
typedef struct {
    Py_ssize_t numel, nnz;
    int coding, k, value_coding, vk, base;
    const uint8_t *positions, *values;
    Py_ssize_t positions_len, values_len;
    float scale;
} Head;

static int parse_head(PyObject *item, Head *h)
{
    PyObject *positions, *values;
    double scale;
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 10)
        return 0;
    for (Py_ssize_t i = 0; i < 10; i++) { /* exact ints, bytes and a float: no __index__ or __float__ runs */
        PyObject *field = PyTuple_GET_ITEM(item, i);
        int exact = i == 4 || i == 6 ? PyBytes_CheckExact(field) : i == 9 ? PyFloat_CheckExact(field)
                                                                           : PyLong_CheckExact(field);
        if (!exact)
            return 0;
    }
    if (!PyArg_ParseTuple(item, "nniiOiOiid", &h->numel, &h->nnz, &h->coding, &h->k, &positions,
                          &h->value_coding, &values, &h->vk, &h->base, &scale)) {
        PyErr_Clear();
        return 0;
    }
    if (!PyBytes_CheckExact(positions) || !PyBytes_CheckExact(values))
        return 0;
    h->positions = (const uint8_t *)PyBytes_AS_STRING(positions);
    h->positions_len = PyBytes_GET_SIZE(positions);
    h->values = (const uint8_t *)PyBytes_AS_STRING(values);
    h->values_len = PyBytes_GET_SIZE(values);
    h->scale = (float)scale; /* numpy's float32(scale): the values are float32 products */
    if (h->numel < 0 || h->numel > (INT64_C(1) << 62) || h->nnz < 0 || h->nnz > h->numel || h->k < 0 || h->k > MAX_RICE_K || h->vk < 0 ||
        h->vk > MAX_RICE_K || h->base < 0 || h->base > 127)
        return 0;
    /* Each count against the bytes that must carry it, before anything is allocated for it: a Rice code is
     * at least one bit, a varint one byte, a raw code one byte, a sign one bit. */
    if (h->coding == GOLOMB_RICE) {
        if (h->nnz > h->positions_len * 8)
            return 0;
    } else if (h->coding == DELTA_VARINT) {
        if (h->nnz > h->positions_len)
            return 0;
    } else {
        return 0;
    }
    if (h->value_coding == VALUE_INT8)
        return h->values_len == h->nnz;
    if (h->value_coding == VALUE_INT8_RICE)
        return h->nnz <= h->values_len * 8;
    return 0;
}

static int decode_one(const Head *h, int64_t *idx, int8_t *codes, float *values, int64_t *scratch)
{
    Py_ssize_t n = h->nnz;
    if (h->coding == GOLOMB_RICE) {
        if (!rice_gaps(h->positions, h->positions_len, n, h->k, idx))
            return 0;
    } else if (!varint_gaps(h->positions, h->positions_len, n, idx)) {
        return 0;
    }
    int64_t at = -1; /* positions from gaps, each inside the tensor (so no sum can overflow) */
    for (Py_ssize_t i = 0; i < n; i++) {
        at += idx[i] + 1;
        if (at >= h->numel)
            return 0;
        idx[i] = at;
    }
    if (h->value_coding == VALUE_INT8) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int8_t code = (int8_t)h->values[i];
            if (code == -128)
                return 0;
            codes[i] = code;
        }
    } else {
        Py_ssize_t sign_bytes = (n + 7) >> 3;
        const uint8_t *signs = h->values;
        if (sign_bytes > h->values_len)
            return 0;
        if ((n & 7) && (signs[sign_bytes - 1] >> (n & 7)))
            return 0; /* sign padding bits are not zero */
        if (!rice_gaps(h->values + sign_bytes, h->values_len - sign_bytes, n, h->vk, scratch))
            return 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t magnitude = scratch[i] + h->base;
            if (magnitude > 127)
                return 0;
            codes[i] = (int8_t)(((signs[i >> 3] >> (i & 7)) & 1) ? -magnitude : magnitude);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        values[i] = (float)codes[i] * h->scale;
    return 1;
}

/* decode_tensors(heads, max_total) -> (positions int64, codes int8, values float32) as bytearrays, or None.
 * heads: one tuple per tensor, in the update's order:
 *   (numel, nnz, index coding, k, positions bytes, value coding, values bytes, value k, value base, scale). */
static PyObject *py_decode_tensors(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *heads;
    Py_ssize_t max_total;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &heads, &max_total))
        return NULL;
    /* A snapshot: parsed[] points into the heads' bytes, which it keeps alive whatever happens to the list. */
    PyObject *snapshot = PyList_AsTuple(heads);
    if (!snapshot)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(snapshot), total = 0, widest = 0;
    Head *parsed = PyMem_Malloc(sizeof(Head) * (size_t)(count ? count : 1));
    if (!parsed) {
        Py_DECREF(snapshot);
        return PyErr_NoMemory();
    }
    PyObject *result = NULL, *idx_obj = NULL, *codes_obj = NULL, *values_obj = NULL;
    int64_t *scratch = NULL;
    for (Py_ssize_t t = 0; t < count; t++) {
        if (!parse_head(PyTuple_GET_ITEM(snapshot, t), &parsed[t]))
            goto refuse;
        total += parsed[t].nnz; /* each nnz is below 8 * a bytes object's size: no overflow */
        if (total > max_total)
            goto refuse;
        if (parsed[t].nnz > widest)
            widest = parsed[t].nnz;
    }
    idx_obj = PyByteArray_FromStringAndSize(NULL, total * 8);
    codes_obj = PyByteArray_FromStringAndSize(NULL, total);
    values_obj = PyByteArray_FromStringAndSize(NULL, total * 4);
    scratch = PyMem_Malloc(sizeof(int64_t) * (size_t)(widest ? widest : 1));
    if (!idx_obj || !codes_obj || !values_obj || !scratch) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    {
        int64_t *idx = (int64_t *)PyByteArray_AS_STRING(idx_obj);
        int8_t *codes = (int8_t *)PyByteArray_AS_STRING(codes_obj);
        float *values = (float *)PyByteArray_AS_STRING(values_obj);
        Py_ssize_t at = 0;
        for (Py_ssize_t t = 0; t < count; t++) {
            if (!decode_one(&parsed[t], idx + at, codes + at, values + at, scratch))
                goto refuse;
            at += parsed[t].nnz;
        }
    }
    result = PyTuple_Pack(3, idx_obj, codes_obj, values_obj);
    goto done;
refuse:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(idx_obj);
    Py_XDECREF(codes_obj);
    Py_XDECREF(values_obj);
    PyMem_Free(scratch);
    PyMem_Free(parsed);
    Py_DECREF(snapshot);
    return result;
}

/* ---- the compact update's bit stream (compact.py: the same layout and checks) ----------------------- */

typedef struct {
    const uint8_t *p;
    Py_ssize_t len, bits, pos;
} Bits;

/* width (0..33) bits, most significant first; 0 if fewer are left. */
static int bits_uint(Bits *b, int width, uint64_t *out)
{
    if (width < 0 || width > 33 || width > b->bits - b->pos)
        return 0;
    *out = width ? (load64(b->p, b->len, b->pos >> 3) << (b->pos & 7)) >> (64 - width) : 0;
    b->pos += width;
    return 1;
}

/* Elias gamma (compact._Bits.gamma): zeros up to the next 1 bit, at most 32, then that many bits more. */
static int bits_gamma(Bits *b, uint64_t *out)
{
    Py_ssize_t zeros = 0;
    for (;;) {
        Py_ssize_t at = b->pos + zeros;
        if (at >= b->bits)
            return 0; /* runs past the end */
        int shift = (int)(at & 7), valid = 64 - shift;
        uint64_t window = load64(b->p, b->len, at >> 3) << shift;
        if (window) {
            zeros += __builtin_clzll(window);
            break;
        }
        zeros += valid;
        if (zeros > 32)
            return 0; /* longer than any count tinyfed writes: no need to find where it ends */
    }
    if (b->pos + zeros >= b->bits || zeros > 32)
        return 0;
    b->pos += zeros;
    return bits_uint(b, (int)zeros + 1, out);
}

/* count Rice codes: a unary run of count codes (ones closed by a zero), then count k-bit remainders. */
static int bits_rice(Bits *b, Py_ssize_t count, int k, int64_t *out)
{
    if (!unary_quotients(b->p, b->len, b->bits, &b->pos, count, k, out))
        return 0;
    if (k) {
        if (count > (b->bits - b->pos) / k)
            return 0;
        for (Py_ssize_t i = 0; i < count; i++)
            out[i] |= (int64_t)read_bits(b->p, b->len, b->pos + i * k, k);
        b->pos += count * k;
    }
    return 1;
}

static inline int bits_bit(const Bits *b, Py_ssize_t at)
{
    return (b->p[at >> 3] >> (7 - (at & 7))) & 1;
}

typedef struct {
    int64_t *idx;
    int8_t *codes;
    Py_ssize_t size, capacity;
} Entries;

static int entries_reserve(Entries *e, Py_ssize_t more)
{
    if (e->size + more <= e->capacity)
        return 1;
    Py_ssize_t capacity = e->capacity ? e->capacity : 1024;
    while (capacity < e->size + more)
        capacity *= 2;
    int64_t *idx = PyMem_Realloc(e->idx, sizeof(int64_t) * (size_t)capacity);
    if (!idx)
        return 0;
    e->idx = idx;
    int8_t *codes = PyMem_Realloc(e->codes, (size_t)capacity);
    if (!codes)
        return 0;
    e->codes = codes;
    e->capacity = capacity;
    return 1;
}

/* One tensor (compact._read_tensor) into e: 1 taken, 0 not, -1 out of memory. *kind: 0 int8, 1 ternary. */
static int compact_tensor(Bits *b, Py_ssize_t numel, Py_ssize_t max_nnz, Entries *e, int *kind, double *scale)
{
    uint64_t nnz_u, flag, k, layout, wide, word, base, vk;
    if (!bits_gamma(b, &nnz_u) || nnz_u > (uint64_t)numel || nnz_u > (uint64_t)max_nnz)
        return 0;
    Py_ssize_t nnz = (Py_ssize_t)nnz_u;
    if (nnz > b->bits - b->pos)
        return 0; /* every entry costs at least one bit: nothing is allocated for entries the bytes cannot hold */
    if (!entries_reserve(e, nnz))
        return -1;
    int64_t *idx = e->idx + e->size;
    int8_t *codes = e->codes + e->size;
    if (nnz == numel) {
        for (Py_ssize_t i = 0; i < nnz; i++)
            idx[i] = i;
    } else {
        if (!bits_uint(b, 1, &flag))
            return 0;
        if (flag) { /* a bitmap of numel bits */
            if (numel > b->bits - b->pos)
                return 0;
            Py_ssize_t found = 0;
            for (Py_ssize_t i = 0; i < numel; i++) {
                if (bits_bit(b, b->pos + i)) {
                    if (found == nnz)
                        return 0;
                    idx[found++] = i;
                }
            }
            if (found != nnz)
                return 0;
            b->pos += numel;
        } else {
            if (!bits_uint(b, 5, &k) || k > MAX_RICE_K || !bits_rice(b, nnz, (int)k, idx))
                return 0;
            int64_t at = -1;
            for (Py_ssize_t i = 0; i < nnz; i++) {
                at += idx[i] + 1;
                if (at >= numel)
                    return 0;
                idx[i] = at;
            }
        }
    }
    if (!bits_uint(b, 2, &layout) || layout > 2 || !bits_uint(b, 1, &wide))
        return 0;
    if (!bits_uint(b, wide ? 32 : 16, &word))
        return 0;
    uint32_t word32 = (uint32_t)(wide ? word : word << 16);
    float value;
    memcpy(&value, &word32, 4);
    if (!isfinite(value) || value < 0)
        return 0;
    *scale = (double)value;
    *kind = layout == 1;
    if (layout == 1) { /* ternary: two bits a value, 01 = +1, 10 = -1 */
        if (nnz > (b->bits - b->pos) / 2)
            return 0;
        for (Py_ssize_t i = 0; i < nnz; i++) {
            int two = bits_bit(b, b->pos + 2 * i) * 2 + bits_bit(b, b->pos + 2 * i + 1);
            if (two == 3)
                return 0;
            codes[i] = (int8_t)(two == 1 ? 1 : two == 2 ? -1 : 0);
        }
        b->pos += 2 * nnz;
    } else if (layout == 2) { /* raw int8 */
        if (nnz > (b->bits - b->pos) / 8)
            return 0;
        for (Py_ssize_t i = 0; i < nnz; i++) {
            int8_t code = (int8_t)read_bits(b->p, b->len, b->pos + 8 * i, 8);
            if (code == -128)
                return 0;
            codes[i] = code;
        }
        b->pos += 8 * nnz;
    } else { /* Rice: base, k, a sign bit a value, then the magnitudes less base */
        if (!bits_uint(b, 7, &base) || !bits_uint(b, 3, &vk) || nnz > b->bits - b->pos)
            return 0;
        Py_ssize_t signs = b->pos;
        b->pos += nnz;
        int64_t *scratch = PyMem_Malloc(sizeof(int64_t) * (size_t)(nnz ? nnz : 1));
        if (!scratch)
            return -1;
        int ok = bits_rice(b, nnz, (int)vk, scratch);
        for (Py_ssize_t i = 0; ok && i < nnz; i++) {
            int64_t m = scratch[i] + (int64_t)base;
            if (m > 127)
                ok = 0;
            else
                codes[i] = (int8_t)(bits_bit(b, signs + i) ? -m : m);
        }
        PyMem_Free(scratch);
        if (!ok)
            return 0;
    }
    e->size += nnz;
    return 1;
}

/* decode_compact(body, numels, max_nnz, max_tensors, max_numel) -> (extras, clip_sent, clip_value, bits read,
 * [(slot, nnz, ternary, scale)], positions int64, codes int8, values float32 (bytearrays)), or None.
 * body: the bytes after the round and samples; numels: the spec's element counts in slot order. */
static PyObject *py_decode_compact(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer buf;
    PyObject *numels;
    Py_ssize_t max_nnz, max_tensors, max_numel;
    PyObject *numel_list;
    if (!PyArg_ParseTuple(args, "y*O!nnn", &buf, &PyList_Type, &numel_list, &max_nnz, &max_tensors, &max_numel))
        return NULL;
    numels = PyList_AsTuple(numel_list); /* a snapshot: nothing below can change it */
    if (!numels) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    Bits b = {(const uint8_t *)buf.buf, buf.len, buf.len * 8, 0};
    Entries e = {NULL, NULL, 0, 0};
    PyObject *heads = PyList_New(0), *result = NULL;
    uint64_t extras, clip_sent, clip_value, count, gap;
    int failed = 0; /* 1: hand back (None), -1: a Python error */
    if (!heads) {
        failed = -1;
        goto done;
    }
    if (!bits_uint(&b, 1, &extras) || !bits_uint(&b, 1, &clip_sent) || !bits_uint(&b, 1, &clip_value) ||
        (!clip_sent && clip_value) || !bits_gamma(&b, &count) || count - 1 > (uint64_t)max_tensors) {
        failed = 1;
        goto done;
    }
    Py_ssize_t slots = PyTuple_GET_SIZE(numels), slot = -1;
    for (uint64_t t = 0; t + 1 < count; t++) {
        if (!bits_gamma(&b, &gap) || gap > (uint64_t)slots) {
            failed = 1;
            goto done;
        }
        slot += (Py_ssize_t)gap;
        if (slot >= slots) {
            failed = 1;
            goto done;
        }
        Py_ssize_t numel = PyLong_AsSsize_t(PyTuple_GET_ITEM(numels, slot));
        if (numel == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            failed = 1;
            goto done;
        }
        if (numel < 0 || numel > max_numel || numel > (INT64_C(1) << 62)) {
            failed = 1;
            goto done;
        }
        Py_ssize_t before = e.size;
        int kind = 0;
        double scale = 0;
        int ok = compact_tensor(&b, numel, max_nnz, &e, &kind, &scale);
        if (ok < 0) {
            PyErr_NoMemory();
            failed = -1;
            goto done;
        }
        if (!ok || e.size > max_nnz) {
            failed = 1;
            goto done;
        }
        PyObject *head = Py_BuildValue("(nnid)", slot, e.size - before, kind, scale);
        if (!head || PyList_Append(heads, head) < 0) {
            Py_XDECREF(head);
            failed = -1;
            goto done;
        }
        Py_DECREF(head);
    }
    Py_ssize_t pad = (8 - (b.pos & 7)) & 7; /* the rest of the last byte: zero bits */
    if (pad && (b.p[b.pos >> 3] & ((1u << pad) - 1))) {
        failed = 1;
        goto done;
    }
    {
        PyObject *idx = PyByteArray_FromStringAndSize((const char *)e.idx, e.size * 8);
        PyObject *codes = PyByteArray_FromStringAndSize((const char *)e.codes, e.size);
        PyObject *values = PyByteArray_FromStringAndSize(NULL, e.size * 4);
        if (idx && codes && values) {
            /* float32(code) * float32(scale), tensor after tensor: CodedValues.decode's values, bit for bit */
            float *out = (float *)PyByteArray_AS_STRING(values);
            Py_ssize_t at = 0;
            for (Py_ssize_t t = 0; t < PyList_GET_SIZE(heads); t++) {
                PyObject *head = PyList_GET_ITEM(heads, t);
                Py_ssize_t nnz = PyLong_AsSsize_t(PyTuple_GET_ITEM(head, 1));
                float scale = (float)PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(head, 3));
                for (Py_ssize_t i = 0; i < nnz; i++, at++)
                    out[at] = (float)e.codes[at] * scale;
            }
            result = Py_BuildValue("(iiinOOOO)", (int)extras, (int)clip_sent, (int)clip_value, b.pos, heads, idx,
                                   codes, values);
        }
        Py_XDECREF(idx);
        Py_XDECREF(codes);
        Py_XDECREF(values);
        if (!result)
            failed = -1;
    }
done:
    PyBuffer_Release(&buf);
    Py_DECREF(numels);
    PyMem_Free(e.idx);
    PyMem_Free(e.codes);
    Py_XDECREF(heads);
    if (failed == 1)
        return Py_NewRef(Py_None);
    return failed < 0 ? NULL : result;
}

static PyMethodDef methods[] = {
    {"scan_ok", py_scan_ok, METH_VARARGS,
     "scan_ok(data, max_items, max_depth) -> bool: True if scan.scan would accept data (its size checked "
     "apart); False for anything else, which the Python scan then refuses by name."},
    {"decode_compact", py_decode_compact, METH_VARARGS,
     "decode_compact(body, numels, max_nnz, max_tensors, max_numel) -> (extras, clip_sent, clip_value, bits, "
     "heads, positions, codes, values), or None for anything compact.py must judge."},
    {"decode_tensors", py_decode_tensors, METH_VARARGS,
     "decode_tensors(heads, max_total) -> (positions, codes, values) bytearrays, or None for anything the "
     "Python decoders must judge."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_cwire",
    .m_doc = "The intake's hot path in C: sound, never the judge (see the source's head).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__cwire(void)
{
    return PyModule_Create(&module);
}
