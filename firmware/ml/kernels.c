/*
 * kernels.c - int8 kernels, the integer math of TFLite's reference kernels
 * (tensorflow/lite/kernels/internal/reference/integer_ops) and of tinyfed's
 * numpy reference (edge_runtime/model/reference.py), which the conformance
 * suite holds every interpreter to. Shapes were validated by ml_load.
 */
#include <math.h>
#include <string.h>
#if defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32
#include <arm_acle.h>
#endif

#include "ml_internal.h"

#define T(i) (&ml_m.tensors[(i)])
#define ACT(t) ((int8_t *)(ml_arena + (t)->arena_off))

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

static int32_t bias_at(const ml_tensor *b, uint32_t c) {
    int32_t v;
    if (b == NULL) return 0;
    memcpy(&v, b->data + 4u * c, 4); /* little-endian target and host */
    return v;
}

/* sum over n of w[i] * (x[i] + off): the hot loop of every weighted kernel, unrolled by four. With the
 * DSP extension (Cortex-M4) four bytes at a time go through SXTB16/SADD16/SMLAD: x + off fits 16 bits
 * (-255..255), and load-time bounds keep the int32 sum from overflowing, so the sum is the same integer. */
static int32_t dot(const int8_t *w, const int8_t *x, int32_t n, int32_t off) {
    int32_t acc = 0, i = 0;
#if defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32
    const uint32_t off2 = ((uint32_t)off & 0xffffu) | ((uint32_t)off << 16);
    for (; i + 4 <= n; i += 4) {
        uint32_t xw, ww;
        memcpy(&xw, x + i, 4);
        memcpy(&ww, w + i, 4);
        acc = __smlad(__sadd16(__sxtb16(xw), off2), __sxtb16(ww), acc);
        acc = __smlad(__sadd16(__sxtb16((xw >> 8) | (xw << 24)), off2), __sxtb16((ww >> 8) | (ww << 24)), acc);
    }
#endif
    for (; i + 4 <= n; i += 4) {
        acc += (int32_t)w[i] * ((int32_t)x[i] + off);
        acc += (int32_t)w[i + 1] * ((int32_t)x[i + 1] + off);
        acc += (int32_t)w[i + 2] * ((int32_t)x[i + 2] + off);
        acc += (int32_t)w[i + 3] * ((int32_t)x[i + 3] + off);
    }
    for (; i < n; i++) acc += (int32_t)w[i] * ((int32_t)x[i] + off);
    return acc;
}

/* Per-output-channel requantisation, computed at load (model.c, fill_quant). */
static void channel_multiplier(const ml_op *op, uint32_t c, int32_t *mult, int *shift) {
    const int32_t *q = (const int32_t *)(const void *)(ml_arena + op->quant_off);
    *mult = q[2 * c];
    *shift = (int)q[2 * c + 1];
}

static void fully_connected(const ml_op *op) {
    const ml_tensor *x = T(op->in[0]), *w = T(op->in[1]), *y = T(op->out);
    const ml_tensor *b = (op->n_in > 2 && op->in[2] != ML_NONE) ? T(op->in[2]) : NULL;
    const int8_t *xs = ACT(x), *ws = (const int8_t *)w->data;
    int8_t *ys = ACT(y);
    uint32_t out_ch = (uint32_t)w->dims[0], depth = (uint32_t)w->dims[1], rows = x->numel / depth, r, c;
    int32_t in_off = -x->zero_point, lo, hi, mult;
    int shift;
    ml_activation_bounds(op->activation, y->scale, y->zero_point, &lo, &hi);
    for (c = 0; c < out_ch; c++) {
        const int8_t *wr = ws + c * depth;
        channel_multiplier(op, c, &mult, &shift);
        for (r = 0; r < rows; r++) {
            int32_t acc = dot(wr, xs + r * depth, (int32_t)depth, in_off);
            ys[r * out_ch + c] = (int8_t)clamp(ml_mbqm((int64_t)acc + bias_at(b, c), mult, shift) + y->zero_point, lo, hi);
        }
    }
}

static void conv(const ml_op *op) {
    const ml_tensor *x = T(op->in[0]), *w = T(op->in[1]), *y = T(op->out);
    const ml_tensor *b = (op->n_in > 2 && op->in[2] != ML_NONE) ? T(op->in[2]) : NULL;
    const int8_t *xs = ACT(x), *ws = (const int8_t *)w->data;
    int8_t *ys = ACT(y);
    /* Everything the loops read is copied to locals: int8 stores may alias anything, so fields would be reloaded. */
    const int32_t ih = x->dims[1], iw = x->dims[2], ic = x->dims[3], oh = y->dims[1], ow = y->dims[2], oc = y->dims[3];
    const int32_t fh = op->filt_h, fw = op->filt_w, in_off = -x->zero_point, out_zp = y->zero_point;
    const int32_t sh = op->stride_h, sw = op->stride_w, ph = op->pad_h, pw = op->pad_w, dh = op->dil_h, dwf = op->dil_w;
    int32_t lo, hi, mult, c, oy, ox, ky, kx;
    int shift;
    ml_activation_bounds(op->activation, y->scale, out_zp, &lo, &hi);
    for (c = 0; c < oc; c++) {
        const int8_t *wc = ws + (uint32_t)c * (uint32_t)(fh * fw * ic);
        int32_t bias = bias_at(b, (uint32_t)c);
        channel_multiplier(op, (uint32_t)c, &mult, &shift);
        for (oy = 0; oy < oh; oy++) {
            for (ox = 0; ox < ow; ox++) {
                int32_t acc = 0, y0 = oy * sh - ph, x0 = ox * sw - pw;
                for (ky = 0; ky < fh; ky++) {
                    int32_t iy = y0 + ky * dh;
                    if (iy < 0 || iy >= ih) continue;
                    if (dwf == 1) { /* the valid taps of a row are contiguous in x and w: one dot product */
                        int32_t k0 = x0 < 0 ? -x0 : 0, k1 = iw - x0 < fw ? iw - x0 : fw;
                        if (k1 > k0)
                            acc += dot(wc + (ky * fw + k0) * ic, xs + (iy * iw + x0 + k0) * ic, (k1 - k0) * ic, in_off);
                        continue;
                    }
                    for (kx = 0; kx < fw; kx++) {
                        int32_t ix = x0 + kx * dwf;
                        if (ix < 0 || ix >= iw) continue;
                        acc += dot(wc + (ky * fw + kx) * ic, xs + (iy * iw + ix) * ic, ic, in_off);
                    }
                }
                ys[(oy * ow + ox) * oc + c] = (int8_t)clamp(ml_mbqm((int64_t)acc + bias, mult, shift) + out_zp, lo, hi);
            }
        }
    }
}

static void depthwise(const ml_op *op) {
    const ml_tensor *x = T(op->in[0]), *w = T(op->in[1]), *y = T(op->out);
    const ml_tensor *b = (op->n_in > 2 && op->in[2] != ML_NONE) ? T(op->in[2]) : NULL;
    const int8_t *xs = ACT(x), *ws = (const int8_t *)w->data;
    int8_t *ys = ACT(y);
    int32_t ih = x->dims[1], iw = x->dims[2], ic = x->dims[3], oh = y->dims[1], ow = y->dims[2], oc = y->dims[3];
    int32_t fh = op->filt_h, fw = op->filt_w, m = op->depth_mult, in_off = -x->zero_point, lo, hi, mult;
    int32_t c, oy, ox, ky, kx;
    int shift;
    ml_activation_bounds(op->activation, y->scale, y->zero_point, &lo, &hi);
    for (c = 0; c < oc; c++) {
        int32_t src = c / m, bias = bias_at(b, (uint32_t)c);
        channel_multiplier(op, (uint32_t)c, &mult, &shift);
        for (oy = 0; oy < oh; oy++) {
            for (ox = 0; ox < ow; ox++) {
                int32_t acc = 0, y0 = oy * op->stride_h - op->pad_h, x0 = ox * op->stride_w - op->pad_w;
                for (ky = 0; ky < fh; ky++) {
                    int32_t iy = y0 + ky * op->dil_h;
                    if (iy < 0 || iy >= ih) continue;
                    for (kx = 0; kx < fw; kx++) {
                        int32_t ix = x0 + kx * op->dil_w;
                        if (ix < 0 || ix >= iw) continue;
                        acc += (int32_t)ws[(ky * fw + kx) * oc + c] * ((int32_t)xs[(iy * iw + ix) * ic + src] + in_off);
                    }
                }
                ys[(oy * ow + ox) * oc + c] =
                    (int8_t)clamp(ml_mbqm((int64_t)acc + bias, mult, shift) + y->zero_point, lo, hi);
            }
        }
    }
}

static void pool(const ml_op *op) {
    const ml_tensor *x = T(op->in[0]), *y = T(op->out);
    const int8_t *xs = ACT(x);
    int8_t *ys = ACT(y);
    int32_t ih = x->dims[1], iw = x->dims[2], ch = x->dims[3], oh = y->dims[1], ow = y->dims[2];
    int32_t oy, ox, c, ky, kx, lo, hi;
    ml_activation_bounds(op->activation, y->scale, y->zero_point, &lo, &hi);
    for (oy = 0; oy < oh; oy++) {
        for (ox = 0; ox < ow; ox++) {
            int32_t y0 = oy * op->stride_h - op->pad_h, x0 = ox * op->stride_w - op->pad_w;
            int32_t ky0 = y0 < 0 ? -y0 : 0, kx0 = x0 < 0 ? -x0 : 0;
            int32_t ky1 = ih - y0 < op->filt_h ? ih - y0 : op->filt_h;
            int32_t kx1 = iw - x0 < op->filt_w ? iw - x0 : op->filt_w;
            for (c = 0; c < ch; c++) {
                int32_t acc = op->code == OP_MAX_POOL_2D ? -128 : 0, count = 0;
                for (ky = ky0; ky < ky1; ky++) {
                    for (kx = kx0; kx < kx1; kx++) {
                        int32_t v = xs[((y0 + ky) * iw + (x0 + kx)) * ch + c];
                        if (op->code == OP_MAX_POOL_2D) {
                            if (v > acc) acc = v;
                        } else {
                            acc += v;
                        }
                        count++;
                    }
                }
                if (op->code == OP_AVERAGE_POOL_2D) {
                    if (count == 0) acc = 0; /* a window of padding only: TFLite divides by 0 here; refuse to */
                    else acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                }
                ys[(oy * ow + ox) * ch + c] = (int8_t)clamp(acc, lo, hi);
            }
        }
    }
}

/* numpy's pairwise summation (what np.sum runs along a contiguous axis), so the softmax divides by the same sum. */
static double pairwise_sum(const double *a, uint32_t n) {
    if (n < 8) {
        double s = 0.0;
        uint32_t i;
        for (i = 0; i < n; i++) s += a[i];
        return s;
    }
    if (n <= 128) {
        double r[8], s;
        uint32_t i, j;
        for (j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (j = 0; j < 8; j++) r[j] += a[i + j];
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += a[i];
        return s;
    } else {
        uint32_t n2 = n / 2;
        n2 -= n2 % 8;
        return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
    }
}

#define SOFTMAX_CHUNK 64

/* As the numpy reference: dequantise, subtract the max, exp in double, divide by the sum, round half to even. */
static void softmax(const ml_op *op) {
    const ml_tensor *x = T(op->in[0]), *y = T(op->out);
    const int8_t *xs = ACT(x);
    int8_t *ys = ACT(y);
    uint32_t depth = (uint32_t)y->dims[y->ndims - 1], rows = y->numel / depth, r, i;
    double in_scale = (double)x->scale, beta = (double)op->beta, out_scale = (double)y->scale;
    for (r = 0; r < rows; r++) {
        const int8_t *xr = xs + r * depth;
        double e[SOFTMAX_CHUNK], peak = -INFINITY, sum = 0.0;
        /* Rows longer than the stack buffer are summed in order, not pairwise (tinyfed's rows are classes: short). */
        for (i = 0; i < depth; i++) {
            double l = ((double)((int32_t)xr[i] - x->zero_point) * in_scale) * beta;
            if (l > peak) peak = l;
        }
        if (depth <= SOFTMAX_CHUNK) {
            for (i = 0; i < depth; i++) e[i] = exp(((double)((int32_t)xr[i] - x->zero_point) * in_scale) * beta - peak);
            sum = pairwise_sum(e, depth);
        } else {
            for (i = 0; i < depth; i++) sum += exp(((double)((int32_t)xr[i] - x->zero_point) * in_scale) * beta - peak);
        }
        for (i = 0; i < depth; i++) {
            double ei = depth <= SOFTMAX_CHUNK ? e[i]
                                               : exp(((double)((int32_t)xr[i] - x->zero_point) * in_scale) * beta - peak);
            double q = ml_round_half_even((ei / sum) / out_scale) + (double)y->zero_point;
            ys[r * depth + i] = (int8_t)(q < -128.0 ? -128 : (q > 127.0 ? 127 : (int32_t)q));
        }
    }
}

ml_status ml_run_ops(uint32_t first, uint32_t last) {
    uint32_t k;
    for (k = first; k < last; k++) {
        const ml_op *op = &ml_m.ops[k];
        switch (op->code) {
        case OP_FULLY_CONNECTED: fully_connected(op); break;
        case OP_CONV_2D: conv(op); break;
        case OP_DEPTHWISE_CONV_2D: depthwise(op); break;
        case OP_MAX_POOL_2D:
        case OP_AVERAGE_POOL_2D: pool(op); break;
        case OP_SOFTMAX: softmax(op); break;
        case OP_RESHAPE:
        case OP_EXPAND_DIMS:
            memmove(ACT(T(op->out)), ACT(T(op->in[0])), T(op->out)->numel);
            break;
        default: return ml_fail(ML_UNSUPPORTED, "operator %u: no kernel", (unsigned)k);
        }
    }
    return ML_OK;
}
