/*
 * model.c - ml_load: read a .tflite flatbuffer in place into the static model
 * table, refuse what the kernels cannot run (before anything runs), and plan
 * the activation arena. Also ml_infer and the error text.
 *
 * Everything a kernel later trusts (shapes, geometry, quantisation, buffer
 * sizes) is checked here once, so the kernels need no checks of their own.
 */
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "ml_internal.h"

ml_model ml_m;
int ml_loaded;
uint8_t ml_arena[ML_ARENA_BYTES] __attribute__((aligned(16)));

const uint8_t ml_supported_ops[] = {OP_FULLY_CONNECTED, OP_CONV_2D,  OP_DEPTHWISE_CONV_2D, OP_MAX_POOL_2D,
                                    OP_AVERAGE_POOL_2D, OP_RESHAPE, OP_EXPAND_DIMS,       OP_SOFTMAX};
const uint32_t ml_supported_op_count = sizeof ml_supported_ops / sizeof ml_supported_ops[0];

/* ---- error text ------------------------------------------------------------ */

static char last_error[96];

const char *ml_last_error(void) {
    return last_error;
}

static void put_str(char **p, char *end, const char *s, uint32_t n) {
    while (n-- && *s && *p < end) *(*p)++ = *s++;
}

static void put_num(char **p, char *end, long v, int is_signed) {
    char tmp[12];
    int n = 0;
    unsigned long u = (is_signed && v < 0) ? (unsigned long)(-v) : (unsigned long)v;
    if (is_signed && v < 0 && *p < end) *(*p)++ = '-';
    do {
        tmp[n++] = (char)('0' + u % 10u);
        u /= 10u;
    } while (u && n < 12);
    while (n && *p < end) *(*p)++ = tmp[--n];
}

ml_status ml_fail(ml_status st, const char *fmt, ...) {
    va_list ap;
    char *p = last_error, *end = last_error + sizeof last_error - 1;
    va_start(ap, fmt);
    for (; *fmt && p < end; fmt++) {
        if (*fmt != '%') {
            *p++ = *fmt;
            continue;
        }
        fmt++;
        if (*fmt == 's') {
            const char *s = va_arg(ap, const char *);
            put_str(&p, end, s, 64);
        } else if (*fmt == 'd') {
            put_num(&p, end, (long)va_arg(ap, int), 1);
        } else if (*fmt == 'u') {
            put_num(&p, end, (long)va_arg(ap, unsigned), 0);
        } else if (*fmt == '\0') {
            break;
        }
    }
    *p = '\0';
    va_end(ap);
    return st;
}

static const char *op_name(uint32_t code) {
    switch (code) {
    case OP_ADD: return "ADD";
    case OP_AVERAGE_POOL_2D: return "AVERAGE_POOL_2D";
    case OP_CONV_2D: return "CONV_2D";
    case OP_DEPTHWISE_CONV_2D: return "DEPTHWISE_CONV_2D";
    case OP_DEQUANTIZE: return "DEQUANTIZE";
    case OP_FULLY_CONNECTED: return "FULLY_CONNECTED";
    case OP_MAX_POOL_2D: return "MAX_POOL_2D";
    case OP_RELU: return "RELU";
    case OP_RESHAPE: return "RESHAPE";
    case OP_SOFTMAX: return "SOFTMAX";
    case OP_MEAN: return "MEAN";
    case OP_EXPAND_DIMS: return "EXPAND_DIMS";
    case OP_QUANTIZE: return "QUANTIZE";
    default: return "builtin";
    }
}

/* ---- fixed-point helpers shared by the kernels ------------------------------ */

/* np.round / Python's round: half to even. Below 2^62 through an integer truncation (cheap without an FPU:
 * no floor/fmod); x - trunc(x) is exact there, and from 2^52 on every double is an integer already. */
double ml_round_half_even(double x) {
    int64_t t;
    double d;
    if (!(x < 4611686018427387904.0 && x > -4611686018427387904.0)) return x; /* huge, inf or NaN */
    t = (int64_t)x;
    d = x - (double)t;
    if (d > 0.5 || (d == 0.5 && (t & 1))) t += 1;
    else if (d < -0.5 || (d == -0.5 && (t & 1))) t -= 1;
    return (double)t;
}

/* TFLite's QuantizeMultiplier, with the rounding of tinyfed's reference (Python's round: half to even). */
void ml_quantize_multiplier(double real, int32_t *mult, int *shift) {
    int e = 0;
    double m, q;
    if (real == 0.0) {
        *mult = 0;
        *shift = 0;
        return;
    }
    m = frexp(real, &e);
    q = ml_round_half_even(m * 2147483648.0);
    if (q == 2147483648.0) {
        q /= 2.0;
        e += 1;
    }
    if (e < -31) {
        *mult = 0;
        *shift = 0;
        return;
    }
    *mult = (int32_t)q;
    *shift = e;
}

static int32_t srdhm(int32_t a, int32_t b) {
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    if (a == b && a == INT32_MIN) return INT32_MAX;
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static int32_t rdbpot(int32_t x, int exponent) {
    int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

int32_t ml_mbqm(int64_t acc, int32_t mult, int shift) {
    /* As the numpy reference: the accumulator times 2^left saturates to int32. A left shift of 31 already
     * saturates any nonzero accumulator and so does |acc| >= 2^31, so clamping both first changes nothing
     * (and keeps a hostile scale or bias from overflowing). */
    int left = shift > 0 ? (shift < 31 ? shift : 31) : 0, right = shift > 0 ? 0 : -shift;
    int64_t scaled;
    if (acc > INT32_MAX) acc = INT32_MAX;
    if (acc < INT32_MIN) acc = INT32_MIN;
    scaled = acc * ((int64_t)1 << left);
    if (scaled > INT32_MAX) scaled = INT32_MAX;
    if (scaled < INT32_MIN) scaled = INT32_MIN;
    return rdbpot(srdhm((int32_t)scaled, mult), right);
}

void ml_activation_bounds(uint8_t act, float scale, int32_t zp, int32_t *lo, int32_t *hi) {
    *lo = -128;
    *hi = 127;
    if (act == ACT_RELU || act == ACT_RELU6) *lo = zp > -128 ? zp : -128;
    if (act == ACT_RELU6) {
        double top = (double)zp + ml_round_half_even(6.0 / (double)scale);
        if (top < (double)*hi) *hi = (int32_t)top;
    }
}

float ml_channel_scale(const ml_tensor *t, uint32_t c) {
    if (!t->per_channel) return t->scale;
    return fb_f32(&ml_m.buf, t->scales_pos + 4u * c);
}

/* ---- loading ------------------------------------------------------------------ */

#define BAD(...) ml_fail(ML_BAD_MODEL, __VA_ARGS__)

static uint32_t elem_size(uint8_t type) {
    switch (type) {
    case TT_INT8: case TT_UINT8: return 1;
    case TT_INT16: return 2;
    case TT_FLOAT32: case TT_INT32: return 4;
    case TT_INT64: return 8;
    default: return 0;
    }
}

static ml_status read_buffer(const fb_buf *b, const fb_vec *buffers, uint32_t index, const uint8_t **data,
                             uint32_t *size) {
    fb_table buf;
    fb_vec v;
    uint64_t off = 0, sz = 0;
    *data = NULL;
    *size = 0;
    if (index == 0) return ML_OK;
    if (index >= buffers->count) return BAD("buffer index %u out of range", (unsigned)index);
    if (!fb_vec_table(b, buffers, index, &buf) || !fb_get_vec(b, &buf, 0, 1, &v) || !fb_get_u64(b, &buf, 1, 0, &off) ||
        !fb_get_u64(b, &buf, 2, 0, &sz))
        return BAD("buffer %u unreadable", (unsigned)index);
    if (off > 1) { /* large-model layout: data after the flatbuffer */
        if (off > b->len || sz > b->len - off) return BAD("buffer %u points past the end", (unsigned)index);
        *data = b->base + (uint32_t)off;
        *size = (uint32_t)sz;
    } else if (v.count) {
        *data = b->base + v.pos;
        *size = v.count;
    }
    return ML_OK;
}

static ml_status read_tensor(const fb_buf *b, const fb_vec *buffers, const fb_table *tt, uint32_t i, ml_tensor *t) {
    fb_vec shape, scales, zps;
    fb_table q;
    uint32_t buffer = 0, size = 0, d, es;
    uint64_t numel = 1;
    uint8_t type = 0;
    int32_t qdim = 0;
    ml_status st;
    memset(t, 0, sizeof *t);
    if (!fb_get_vec(b, tt, 0, 4, &shape) || !fb_get_u8(b, tt, 1, 0, &type) || !fb_get_u32(b, tt, 2, 0, &buffer) ||
        !fb_get_str(b, tt, 3, &t->name, &t->name_len) || !fb_get_table(b, tt, 4, &q))
        return BAD("tensor %u unreadable", (unsigned)i);
    if (shape.count > ML_MAX_DIMS) return ml_fail(ML_UNSUPPORTED, "tensor %u has rank %u", (unsigned)i, (unsigned)shape.count);
    t->type = type;
    t->ndims = (uint8_t)shape.count;
    for (d = 0; d < shape.count; d++) {
        int32_t v = fb_i32(b, shape.pos + 4u * d);
        if (v < 1 || v > (1 << 24)) return BAD("tensor %u has dimension %d", (unsigned)i, (int)v);
        t->dims[d] = v;
        numel *= (uint64_t)v;
        if (numel > (1u << 24)) return BAD("tensor %u is too large", (unsigned)i);
    }
    t->numel = (uint32_t)numel;
    st = read_buffer(b, buffers, buffer, &t->data, &size);
    if (st != ML_OK) return st;
    if (t->data) {
        es = elem_size(type);
        if (es == 0) return ml_fail(ML_UNSUPPORTED, "tensor %u: constant of type %u", (unsigned)i, (unsigned)type);
        if (size != t->numel * es)
            return BAD("tensor %u: buffer of %u bytes, shape needs %u", (unsigned)i, (unsigned)size,
                       (unsigned)(t->numel * es));
        t->is_const = 1;
    }
    if (q.pos) {
        if (!fb_get_vec(b, &q, 2, 4, &scales) || !fb_get_vec(b, &q, 3, 8, &zps) || !fb_get_i32(b, &q, 6, 0, &qdim))
            return BAD("tensor %u: quantisation unreadable", (unsigned)i);
        if (scales.count) {
            uint32_t c;
            for (c = 0; c < scales.count; c++) {
                float s = fb_f32(b, scales.pos + 4u * c);
                if (!(s > 0.0f) || !isfinite(s)) return BAD("tensor %u: scale %u is not a positive number", (unsigned)i, (unsigned)c);
            }
            t->scale = fb_f32(b, scales.pos);
            t->scales_pos = scales.pos;
            t->scales_count = scales.count;
            t->per_channel = scales.count > 1;
            if (zps.count) {
                int64_t zp = fb_i64(b, zps.pos);
                if (zp < -128 || zp > 127) return BAD("tensor %u: zero point out of int8 range", (unsigned)i);
                t->zero_point = (int32_t)zp;
            }
            if (t->per_channel) {
                if (qdim < 0 || (uint32_t)qdim >= t->ndims || (uint32_t)t->dims[qdim] != scales.count)
                    return BAD("tensor %u: %u scales do not fit axis %d", (unsigned)i, (unsigned)scales.count, (int)qdim);
            }
        }
    }
    return ML_OK;
}

static ml_status need_int8_act(uint32_t op, int16_t i, const char *what) {
    const ml_tensor *t = &ml_m.tensors[i];
    if (t->is_const || t->type != TT_INT8 || t->scale <= 0.0f || t->per_channel)
        return ml_fail(ML_UNSUPPORTED, "operator %u %s: %s is not an int8 per-tensor activation", (unsigned)op,
                       op_name(ml_m.ops[op].code), what);
    return ML_OK;
}

/* Output length and leading pad along one axis, as TFLite computes them. */
static int geometry(int32_t in, uint32_t filt, uint32_t stride, uint32_t dil, uint8_t pad, int32_t *out, int16_t *lead) {
    int32_t eff = (int32_t)((filt - 1u) * dil + 1u), total;
    if (pad == PAD_SAME) {
        *out = (in + (int32_t)stride - 1) / (int32_t)stride;
        total = (*out - 1) * (int32_t)stride + eff - in;
        *lead = (int16_t)(total > 0 ? total / 2 : 0);
    } else {
        if (eff > in) return 0;
        *out = (in - eff) / (int32_t)stride + 1;
        *lead = 0;
    }
    return 1;
}

static ml_status check_op(uint32_t k) {
    ml_op *op = &ml_m.ops[k];
    const ml_tensor *x = &ml_m.tensors[op->in[0]], *y = &ml_m.tensors[op->out], *w, *bias;
    ml_status st;
    const char *nm = op_name(op->code);
    if ((st = need_int8_act(k, op->in[0], "input")) != ML_OK) return st;
    if ((st = need_int8_act(k, op->out, "output")) != ML_OK) return st;
    if (op->activation > ACT_RELU6 || op->activation == ACT_RELU_N1_TO_1)
        return ml_fail(ML_UNSUPPORTED, "operator %u %s: fused activation %u", (unsigned)k, nm, (unsigned)op->activation);
    switch (op->code) {
    case OP_FULLY_CONNECTED:
    case OP_CONV_2D:
    case OP_DEPTHWISE_CONV_2D: {
        uint32_t out_ch;
        if (op->n_in < 2 || op->in[1] == ML_NONE) return BAD("operator %u %s has no weights", (unsigned)k, nm);
        w = &ml_m.tensors[op->in[1]];
        if (!w->is_const || w->type != TT_INT8 || w->scale <= 0.0f)
            return ml_fail(ML_UNSUPPORTED, "operator %u %s: weights are not constant int8", (unsigned)k, nm);
        if (op->code == OP_FULLY_CONNECTED) {
            if (w->ndims != 2) return BAD("operator %u %s: weights of rank %u", (unsigned)k, nm, (unsigned)w->ndims);
            out_ch = (uint32_t)w->dims[0];
            if (x->numel % (uint32_t)w->dims[1] != 0 || y->numel != x->numel / (uint32_t)w->dims[1] * out_ch)
                return BAD("operator %u %s: shapes do not fit the weights", (unsigned)k, nm);
            if (w->per_channel && w->scales_count != out_ch) return BAD("operator %u %s: scales", (unsigned)k, nm);
        } else {
            int32_t oh, ow;
            int dw = op->code == OP_DEPTHWISE_CONV_2D;
            if (w->ndims != 4 || x->ndims != 4 || y->ndims != 4 || x->dims[0] != 1 || y->dims[0] != 1)
                return ml_fail(ML_UNSUPPORTED, "operator %u %s: only batch 1 NHWC", (unsigned)k, nm);
            if (op->stride_h < 1 || op->stride_w < 1 || op->dil_h < 1 || op->dil_w < 1)
                return BAD("operator %u %s: stride or dilation below 1", (unsigned)k, nm);
            op->filt_h = (uint16_t)w->dims[1];
            op->filt_w = (uint16_t)w->dims[2];
            if (!geometry(x->dims[1], op->filt_h, op->stride_h, op->dil_h, op->padding, &oh, &op->pad_h) ||
                !geometry(x->dims[2], op->filt_w, op->stride_w, op->dil_w, op->padding, &ow, &op->pad_w) ||
                oh != y->dims[1] || ow != y->dims[2])
                return BAD("operator %u %s: output shape does not fit the geometry", (unsigned)k, nm);
            if (dw) {
                out_ch = (uint32_t)w->dims[3];
                if (w->dims[0] != 1 || op->depth_mult < 1 || (uint32_t)x->dims[3] * op->depth_mult != out_ch ||
                    (uint32_t)y->dims[3] != out_ch)
                    return BAD("operator %u %s: channels do not fit the weights", (unsigned)k, nm);
                if (w->per_channel && (w->scales_count != out_ch)) return BAD("operator %u %s: scales", (unsigned)k, nm);
            } else {
                out_ch = (uint32_t)w->dims[0];
                if (w->dims[3] != x->dims[3] || (uint32_t)y->dims[3] != out_ch)
                    return BAD("operator %u %s: channels do not fit the weights", (unsigned)k, nm);
                if (w->per_channel && w->scales_count != out_ch) return BAD("operator %u %s: scales", (unsigned)k, nm);
            }
        }
        /* Every product is at most 128 x 255 in magnitude: more than 65,793 per output could overflow int32. */
        if ((op->code == OP_FULLY_CONNECTED ? (uint64_t)w->dims[1]
                                            : (uint64_t)w->dims[1] * (uint64_t)w->dims[2] *
                                                  (uint64_t)(op->code == OP_CONV_2D ? w->dims[3] : 1)) > 65793u)
            return ml_fail(ML_UNSUPPORTED, "operator %u %s: more than 65793 products per output", (unsigned)k, nm);
        if (op->n_in > 2 && op->in[2] != ML_NONE) {
            bias = &ml_m.tensors[op->in[2]];
            if (!bias->is_const || bias->type != TT_INT32 || bias->numel != out_ch)
                return ml_fail(ML_UNSUPPORTED, "operator %u %s: bias is not constant int32 [%u]", (unsigned)k, nm,
                               (unsigned)out_ch);
        }
        return ML_OK;
    }
    case OP_MAX_POOL_2D:
    case OP_AVERAGE_POOL_2D: {
        int32_t oh, ow;
        if (x->ndims != 4 || y->ndims != 4 || x->dims[0] != 1 || y->dims[0] != 1 || x->dims[3] != y->dims[3])
            return ml_fail(ML_UNSUPPORTED, "operator %u %s: only batch 1 NHWC", (unsigned)k, nm);
        if (op->stride_h < 1 || op->stride_w < 1 || op->filt_h < 1 || op->filt_w < 1)
            return BAD("operator %u %s: stride or filter below 1", (unsigned)k, nm);
        if (!geometry(x->dims[1], op->filt_h, op->stride_h, 1, op->padding, &oh, &op->pad_h) ||
            !geometry(x->dims[2], op->filt_w, op->stride_w, 1, op->padding, &ow, &op->pad_w) || oh != y->dims[1] ||
            ow != y->dims[2])
            return BAD("operator %u %s: output shape does not fit the geometry", (unsigned)k, nm);
        return ML_OK;
    }
    case OP_RESHAPE:
    case OP_EXPAND_DIMS:
        if (x->numel != y->numel) return BAD("operator %u %s changes the element count", (unsigned)k, nm);
        return ML_OK;
    case OP_SOFTMAX:
        if (x->numel != y->numel || y->ndims < 1) return BAD("operator %u %s: shapes differ", (unsigned)k, nm);
        return ML_OK;
    default:
        return ml_fail(ML_UNSUPPORTED, "operator %u %s (code %u): no kernel in this firmware", (unsigned)k, nm,
                       (unsigned)op->code);
    }
}

static ml_status read_options(const fb_buf *b, const fb_table *opt, ml_op *op) {
    uint8_t u8v = 0;
    int32_t v = 0;
    int ok = 1;
    op->stride_h = op->stride_w = op->dil_h = op->dil_w = 1;
    op->depth_mult = 1;
    op->beta = 1.0f;
    if (!opt->pos) return ML_OK;
#define I32(id, dst, dflt) ok = ok && fb_get_i32(b, opt, id, dflt, &v) && v >= 0 && v < 65536, dst = (uint16_t)v
#define U8(id, dst) ok = ok && fb_get_u8(b, opt, id, 0, &u8v), dst = u8v
    switch (op->code) {
    case OP_CONV_2D:
        U8(0, op->padding); I32(1, op->stride_w, 1); I32(2, op->stride_h, 1); U8(3, op->activation);
        I32(4, op->dil_w, 1); I32(5, op->dil_h, 1);
        break;
    case OP_DEPTHWISE_CONV_2D:
        U8(0, op->padding); I32(1, op->stride_w, 1); I32(2, op->stride_h, 1); I32(3, op->depth_mult, 1);
        U8(4, op->activation); I32(5, op->dil_w, 1); I32(6, op->dil_h, 1);
        break;
    case OP_AVERAGE_POOL_2D:
    case OP_MAX_POOL_2D:
        U8(0, op->padding); I32(1, op->stride_w, 1); I32(2, op->stride_h, 1); I32(3, op->filt_w, 1);
        I32(4, op->filt_h, 1); U8(5, op->activation);
        break;
    case OP_FULLY_CONNECTED:
        U8(0, op->activation);
        U8(1, u8v);
        if (ok && u8v != 0) return ml_fail(ML_UNSUPPORTED, "FULLY_CONNECTED: shuffled weights format");
        break;
    case OP_SOFTMAX:
        ok = fb_get_f32(b, opt, 0, 1.0f, &op->beta) && isfinite(op->beta);
        break;
    default:
        break;
    }
#undef I32
#undef U8
    if (!ok) return BAD("operator options unreadable or out of range");
    if (op->padding > PAD_VALID) return BAD("padding %u", (unsigned)op->padding);
    return ML_OK;
}

static ml_status read_graph(const fb_buf *b) {
    fb_table model, sg, tt, opt, code_t;
    fb_vec codes, subgraphs, buffers, tensors, ops, ins, outs, op_in, op_out;
    uint32_t i, j;
    ml_status st;
    if (!fb_root(b, "TFL3", &model)) return BAD("not a TFLite flatbuffer (identifier or root offset)");
    if (!fb_get_vec(b, &model, 1, 4, &codes) || !fb_get_vec(b, &model, 2, 4, &subgraphs) ||
        !fb_get_vec(b, &model, 4, 4, &buffers))
        return BAD("model tables unreadable");
    if (subgraphs.count < 1 || !fb_vec_table(b, &subgraphs, 0, &sg)) return BAD("model has no subgraph");
    if (!fb_get_vec(b, &sg, 0, 4, &tensors) || !fb_get_vec(b, &sg, 1, 4, &ins) || !fb_get_vec(b, &sg, 2, 4, &outs) ||
        !fb_get_vec(b, &sg, 3, 4, &ops))
        return BAD("subgraph unreadable");
    if (tensors.count > ML_MAX_TENSORS)
        return ml_fail(ML_NO_MEMORY, "%u tensors, this firmware holds %u", (unsigned)tensors.count, (unsigned)ML_MAX_TENSORS);
    if (ops.count > ML_MAX_OPS)
        return ml_fail(ML_NO_MEMORY, "%u operators, this firmware holds %u", (unsigned)ops.count, (unsigned)ML_MAX_OPS);
    if (ops.count == 0) return BAD("model has no operators");
    if (ins.count != 1 || outs.count != 1)
        return ml_fail(ML_UNSUPPORTED, "%u inputs and %u outputs; one of each supported", (unsigned)ins.count,
                       (unsigned)outs.count);
    ml_m.n_tensors = tensors.count;
    ml_m.n_ops = ops.count;
    for (i = 0; i < tensors.count; i++) {
        if (!fb_vec_table(b, &tensors, i, &tt)) return BAD("tensor %u unreadable", (unsigned)i);
        if ((st = read_tensor(b, &buffers, &tt, i, &ml_m.tensors[i])) != ML_OK) return st;
        ml_m.tensors[i].first_use = -2; /* not yet available */
        ml_m.tensors[i].last_use = -2;
    }
    {
        int32_t in = fb_i32(b, ins.pos), out = fb_i32(b, outs.pos);
        if (in < 0 || (uint32_t)in >= tensors.count || out < 0 || (uint32_t)out >= tensors.count)
            return BAD("model input/output tensor index out of range");
        ml_m.input = (int16_t)in;
        ml_m.output = (int16_t)out;
        if (ml_m.tensors[in].is_const || ml_m.tensors[in].type != TT_INT8 || ml_m.tensors[in].scale <= 0.0f)
            return ml_fail(ML_UNSUPPORTED, "model input is not an int8 quantised tensor");
        ml_m.tensors[in].first_use = -1;
    }
    for (i = 0; i < ops.count; i++) {
        ml_op *op = &ml_m.ops[i];
        fb_table t;
        uint32_t idx = 0;
        int32_t bc = 0;
        uint8_t dc = 0;
        memset(op, 0, sizeof *op);
        if (!fb_vec_table(b, &ops, i, &t) || !fb_get_u32(b, &t, 0, 0, &idx) || !fb_get_vec(b, &t, 1, 4, &op_in) ||
            !fb_get_vec(b, &t, 2, 4, &op_out) || !fb_get_table(b, &t, 4, &opt))
            return BAD("operator %u unreadable", (unsigned)i);
        if (idx >= codes.count || !fb_vec_table(b, &codes, idx, &code_t) || !fb_get_u8(b, &code_t, 0, 0, &dc) ||
            !fb_get_i32(b, &code_t, 3, 0, &bc))
            return BAD("operator %u: opcode index %u unreadable", (unsigned)i, (unsigned)idx);
        bc = bc > (int32_t)dc ? bc : (int32_t)dc;
        if (bc < 0 || bc > 255) return ml_fail(ML_UNSUPPORTED, "operator %u: builtin code %d", (unsigned)i, (int)bc);
        op->code = (uint8_t)bc;
        if (op_in.count < 1 || op_in.count > 3 || op_out.count != 1)
            return ml_fail(ML_UNSUPPORTED, "operator %u %s: %u inputs, %u outputs", (unsigned)i, op_name(op->code),
                           (unsigned)op_in.count, (unsigned)op_out.count);
        op->n_in = (uint8_t)op_in.count;
        for (j = 0; j < 3; j++) op->in[j] = ML_NONE;
        for (j = 0; j < op_in.count; j++) {
            int32_t v = fb_i32(b, op_in.pos + 4u * j);
            if (v < -1 || v >= (int32_t)tensors.count)
                return BAD("operator %u names tensor %d, model has %u", (unsigned)i, (int)v, (unsigned)tensors.count);
            op->in[j] = (int16_t)v;
        }
        {
            int32_t v = fb_i32(b, op_out.pos);
            if (v < 0 || v >= (int32_t)tensors.count)
                return BAD("operator %u names output tensor %d", (unsigned)i, (int)v);
            op->out = (int16_t)v;
        }
        if (op->in[0] == ML_NONE) return BAD("operator %u has no data input", (unsigned)i);
        if ((st = read_options(b, &opt, op)) != ML_OK) return st;
        if ((st = check_op(i)) != ML_OK) return st;
        /* Dataflow: the input must exist already, the output be produced once. */
        if (ml_m.tensors[op->in[0]].first_use == -2)
            return BAD("operator %u reads tensor %d before anything writes it", (unsigned)i, (int)op->in[0]);
        if (ml_m.tensors[op->out].first_use != -2 || op->out == op->in[0])
            return BAD("operator %u writes tensor %d a second time", (unsigned)i, (int)op->out);
        ml_m.tensors[op->in[0]].last_use = (int16_t)i;
        ml_m.tensors[op->out].first_use = (int16_t)i;
        ml_m.tensors[op->out].last_use = (int16_t)i;
    }
    if (ml_m.tensors[ml_m.output].first_use < 0) return BAD("no operator produces the model output");
    ml_m.tensors[ml_m.output].last_use = (int16_t)ml_m.n_ops;
    if (ml_m.tensors[ml_m.input].last_use == -2) ml_m.tensors[ml_m.input].last_use = -1;
    return ML_OK;
}

/* Greedy plan, largest first: each activation gets the lowest 16-byte-aligned
 * offset that overlaps no placed tensor whose lifetime overlaps its own. */
static uint32_t plan_arena(void) {
    int16_t order[ML_MAX_TENSORS];
    uint32_t n = 0, i, j, peak = 0;
    for (i = 0; i < ml_m.n_tensors; i++)
        if (!ml_m.tensors[i].is_const && ml_m.tensors[i].first_use != -2) order[n++] = (int16_t)i;
    for (i = 1; i < n; i++) { /* insertion sort by size, descending; stable */
        int16_t t = order[i];
        for (j = i; j > 0 && ml_m.tensors[order[j - 1]].numel < ml_m.tensors[t].numel; j--) order[j] = order[j - 1];
        order[j] = t;
    }
    for (i = 0; i < n; i++) {
        ml_tensor *t = &ml_m.tensors[order[i]];
        uint32_t off = 0, size = (t->numel + 15u) & ~15u;
        int moved = 1;
        while (moved) {
            moved = 0;
            for (j = 0; j < i; j++) {
                const ml_tensor *o = &ml_m.tensors[order[j]];
                uint32_t osize = (o->numel + 15u) & ~15u;
                if (o->last_use < t->first_use || t->last_use < o->first_use) continue;
                if (off < o->arena_off + osize && o->arena_off < off + size) {
                    off = o->arena_off + osize;
                    moved = 1;
                }
            }
        }
        t->arena_off = off;
        if (off + size > peak) peak = off + size;
    }
    return peak;
}

static void fill_info(uint32_t arena) {
    ml_info *info = &ml_m.info;
    const ml_tensor *in = &ml_m.tensors[ml_m.input], *out = &ml_m.tensors[ml_m.output];
    int32_t k, last_weighted = -1;
    memset(info, 0, sizeof *info);
    info->input_len = in->numel;
    info->input_scale = in->scale;
    info->input_zero_point = in->zero_point;
    info->output_len = out->numel;
    info->output_scale = out->scale;
    info->output_zero_point = out->zero_point;
    info->arena_bytes = arena;
    info->op_count = ml_m.n_ops;
    info->tensor_count = ml_m.n_tensors;
    for (k = 0; k < (int32_t)ml_m.n_ops; k++) {
        uint8_t c = ml_m.ops[k].code;
        if (c == OP_FULLY_CONNECTED || c == OP_CONV_2D || c == OP_DEPTHWISE_CONV_2D) last_weighted = k;
    }
    /* Trainable as the board trains: the tail is exactly FULLY_CONNECTED (with bias) -> SOFTMAX -> output. */
    if (last_weighted >= 0 && (uint32_t)last_weighted + 2u == ml_m.n_ops) {
        const ml_op *fc = &ml_m.ops[last_weighted], *sm = &ml_m.ops[last_weighted + 1];
        if (fc->code == OP_FULLY_CONNECTED && fc->n_in > 2 && fc->in[2] != ML_NONE && sm->code == OP_SOFTMAX &&
            sm->in[0] == fc->out && sm->out == ml_m.output) {
            const ml_tensor *w = &ml_m.tensors[fc->in[1]], *b = &ml_m.tensors[fc->in[2]];
            if (ml_m.tensors[fc->in[0]].numel == (uint32_t)w->dims[1] && out->numel == (uint32_t)w->dims[0]) {
                info->trainable = 1;
                info->cut_op = (uint32_t)last_weighted;
                info->classes = (uint32_t)w->dims[0];
                info->feature_len = (uint32_t)w->dims[1];
                info->weight_tensor = (uint32_t)fc->in[1];
                info->bias_tensor = (uint32_t)fc->in[2];
                info->weight_numel = w->numel;
                info->bias_numel = b->numel;
                info->weight_name = w->name;
                info->weight_name_len = w->name_len;
                info->bias_name = b->name;
                info->bias_name_len = b->name_len;
            }
        }
    }
}

/* Per-channel requantisation parameters, computed once (double arithmetic is costly on a Cortex-M): what
 * TFLite Micro keeps in its persistent arena too. Placed after the activations; returns the new arena size. */
static uint32_t plan_quant(uint32_t arena) {
    uint32_t k;
    for (k = 0; k < ml_m.n_ops; k++) {
        ml_op *op = &ml_m.ops[k];
        if (op->code == OP_FULLY_CONNECTED || op->code == OP_CONV_2D || op->code == OP_DEPTHWISE_CONV_2D) {
            const ml_tensor *w = &ml_m.tensors[op->in[1]];
            uint32_t channels = (uint32_t)w->dims[op->code == OP_DEPTHWISE_CONV_2D ? 3 : 0];
            op->quant_off = (arena + 7u) & ~7u;
            arena = op->quant_off + 8u * channels;
        }
    }
    return (arena + 15u) & ~15u;
}

static void fill_quant(void) {
    uint32_t k, c;
    for (k = 0; k < ml_m.n_ops; k++) {
        const ml_op *op = &ml_m.ops[k];
        if (op->code == OP_FULLY_CONNECTED || op->code == OP_CONV_2D || op->code == OP_DEPTHWISE_CONV_2D) {
            const ml_tensor *x = &ml_m.tensors[op->in[0]], *w = &ml_m.tensors[op->in[1]], *y = &ml_m.tensors[op->out];
            uint32_t channels = (uint32_t)w->dims[op->code == OP_DEPTHWISE_CONV_2D ? 3 : 0];
            int32_t *q = (int32_t *)(void *)(ml_arena + op->quant_off);
            for (c = 0; c < channels; c++) {
                /* in_scale * w_scale[c] / out_scale in double, as TFLite and the numpy reference compute it. */
                double real = (double)x->scale * (double)ml_channel_scale(w, c) / (double)y->scale;
                int shift;
                ml_quantize_multiplier(real, &q[2 * c], &shift);
                q[2 * c + 1] = shift;
            }
        }
    }
}

ml_status ml_load(const uint8_t *model, uint32_t len, ml_info *info) {
    ml_status st;
    uint32_t arena;
    ml_loaded = 0;
    last_error[0] = '\0';
    memset(&ml_m, 0, sizeof ml_m);
    if (model == NULL) return BAD("no model bytes");
    ml_m.buf.base = model;
    ml_m.buf.len = len;
    if ((st = read_graph(&ml_m.buf)) != ML_OK) return st;
    arena = plan_quant(plan_arena());
    fill_info(arena);
    if (arena > ML_ARENA_BYTES)
        return ml_fail(ML_NO_MEMORY, "activations and requantisation need %u B of arena, the firmware has %u B", (unsigned)arena,
                       (unsigned)ML_ARENA_BYTES);
    fill_quant();
    if (info) *info = ml_m.info;
    ml_loaded = 1;
    return ML_OK;
}

void ml_unload(void) {
    ml_loaded = 0;
}

const ml_info *ml_model_info(void) {
    return ml_loaded ? &ml_m.info : NULL;
}

ml_status ml_infer(const int8_t *in, int8_t *out) {
    ml_status st;
    if (!ml_loaded) return ml_fail(ML_NO_MODEL, "no model loaded");
    memcpy(ml_arena + ml_m.tensors[ml_m.input].arena_off, in, ml_m.tensors[ml_m.input].numel);
    if ((st = ml_run_ops(0, ml_m.n_ops)) != ML_OK) return st;
    memcpy(out, ml_arena + ml_m.tensors[ml_m.output].arena_off, ml_m.tensors[ml_m.output].numel);
    return ML_OK;
}
