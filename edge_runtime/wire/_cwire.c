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
    Py_ssize_t max_items, max_depth;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &max_items, &max_depth))
        return NULL;
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
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t q = 0;
        for (;;) {
            if (bit >= unary_bits)
                return 0;
            int shift = (int)(bit & 7), valid = 64 - shift;
            /* past the end read as 0 bits, so a run of 1s always ends inside the window or fills it */
            uint64_t inverted = ~(load64(p, unary_bytes, bit >> 3) << shift);
            int run = __builtin_clzll(inverted); /* inverted != 0: its low `shift` bits, or a 0 read, are 1 */
            if (run < valid) {
                if (bit + run >= unary_bits)
                    return 0; /* that 0 bit is past the unary part */
                q += run;
                bit += run + 1;
                break;
            }
            q += valid;
            bit += valid;
        }
        out[i] = q << k;
    }
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
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 10)
        return 0;
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
    if (h->numel < 0 || h->nnz < 0 || h->nnz > h->numel || h->k < 0 || h->k > MAX_RICE_K || h->vk < 0 ||
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
    Py_ssize_t count = PyList_GET_SIZE(heads), total = 0, widest = 0;
    Head *parsed = PyMem_Malloc(sizeof(Head) * (size_t)(count ? count : 1));
    if (!parsed)
        return PyErr_NoMemory();
    PyObject *result = NULL, *idx_obj = NULL, *codes_obj = NULL, *values_obj = NULL;
    int64_t *scratch = NULL;
    for (Py_ssize_t t = 0; t < count; t++) {
        if (!parse_head(PyList_GET_ITEM(heads, t), &parsed[t]))
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
    return result;
}

static PyMethodDef methods[] = {
    {"scan_ok", py_scan_ok, METH_VARARGS,
     "scan_ok(data, max_items, max_depth) -> bool: True if scan.scan would accept data (its size checked "
     "apart); False for anything else, which the Python scan then refuses by name."},
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
