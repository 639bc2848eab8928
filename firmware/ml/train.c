/*
 * train.c - train the last FULLY_CONNECTED layer as edge_runtime/train/trainer.py
 * does with the cut at that layer (hil/board.py's _train): features are the
 * int8 backbone's cut activation dequantised to float32, computed once; each
 * batch runs the fake-quantised layer (weights per channel on their int8
 * grid, bias on the input x weight scale grid, output on the grid of its
 * running EMA range), softmax cross-entropy, and SGD with momentum (plus
 * weight decay, FedProx, cosine decay). Each float operation follows the
 * numpy expression it mirrors, in the same precision (float32 where numpy
 * computes in float32, double where numpy promotes), so only the order of
 * the sums (BLAS vs a loop) and libm's last bit differ.
 *
 * Arena layout during training (offsets 16-byte aligned):
 *   [activations of the backbone | int8 features, samples x F | dequantisation table, 256 | w | v | g | wq
 *    | z, batch x O | y, batch x O | mask, batch x O | row scales, O | exp, O | log p, batch | order]
 * w, v, g, wq hold P = O*F + O floats: weights [O][F] then bias [O].
 */
#include <math.h>
#include <string.h>

#include "ml_internal.h"

#define ALIGN16(x) (((x) + 15u) & ~15u)

typedef struct {
    uint32_t feats, lut, w, v, g, wq, z, y, mask, scales, ex, logs, order, total;
} layout;

static int plan(uint32_t samples, uint32_t batch, int own_order, layout *l) {
    const ml_info *in = &ml_m.info;
    uint64_t o = ALIGN16(in->arena_bytes), p = (uint64_t)in->classes * in->feature_len + in->classes;
    uint64_t bo = (uint64_t)batch * in->classes;
#define PUT(field, bytes) l->field = (uint32_t)o, o = ALIGN16(o + (uint64_t)(bytes))
    if (o > 0xffffffffu) return 0;
    PUT(feats, (uint64_t)samples * in->feature_len);
    PUT(lut, 4 * 256);
    PUT(w, 4 * p);
    PUT(v, 4 * p);
    PUT(g, 4 * p);
    PUT(wq, 4 * p);
    PUT(z, 4 * bo);
    PUT(y, 4 * bo);
    PUT(mask, bo);
    PUT(scales, 4 * (uint64_t)in->classes);
    PUT(ex, 4 * (uint64_t)in->classes);
    PUT(logs, 4 * (uint64_t)batch);
    PUT(order, own_order ? 4 * (uint64_t)samples : 0);
#undef PUT
    if (o > 0xffffffffu) return 0;
    l->total = (uint32_t)o;
    return 1;
}

uint32_t ml_train_bytes(uint32_t samples, uint32_t batch_size) {
    layout l;
    if (!ml_loaded || !ml_m.info.trainable) return 0;
    if (batch_size > samples) batch_size = samples ? samples : 1;
    return plan(samples, batch_size, 1, &l) ? l.total : 0xffffffffu;
}

void ml_train_config_default(ml_train_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->epochs = 5;
    cfg->batch_size = 32;
    cfg->learning_rate = 0.05;
    cfg->momentum = 0.9f;
    cfg->cosine_decay = 1;
    cfg->order = NULL;
}

/* np.round on float32: half to even, by truncation (x - trunc(x) is exact below 2^23; above, x is integral). */
static float rhe(float x) {
    int32_t t;
    float d;
    if (!(x < 8388608.0f && x > -8388608.0f)) return x;
    t = (int32_t)x;
    d = x - (float)t;
    if (d > 0.5f || (d == 0.5f && (t & 1))) t += 1;
    else if (d < -0.5f || (d == -0.5f && (t & 1))) t -= 1;
    return (float)t;
}

/* numpy's pairwise sum of a float32 vector (np.sum on a contiguous axis). */
static float pairwise_f(const float *a, uint32_t n, uint32_t stride) {
    if (n < 8) {
        float s = 0.0f;
        uint32_t i;
        for (i = 0; i < n; i++) s += a[i * stride];
        return s;
    }
    if (n <= 128) {
        float r[8], s;
        uint32_t i, j;
        for (j = 0; j < 8; j++) r[j] = a[j * stride];
        for (i = 8; i < n - (n % 8); i += 8)
            for (j = 0; j < 8; j++) r[j] += a[(i + j) * stride];
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += a[i * stride];
        return s;
    } else {
        uint32_t n2 = n / 2;
        n2 -= n2 % 8;
        return pairwise_f(a, n2, stride) + pairwise_f(a + n2 * stride, n - n2, stride);
    }
}

/* The layer's weights/bias as the model holds them, dequantised (Tail._dequantized_weights): the base. */
static void base_params(float *dst) {
    const ml_op *fc = &ml_m.ops[ml_m.info.cut_op];
    const ml_tensor *w = &ml_m.tensors[fc->in[1]], *b = &ml_m.tensors[fc->in[2]];
    uint32_t O = ml_m.info.classes, F = ml_m.info.feature_len, c, i;
    double in_scale = (double)ml_m.tensors[fc->in[0]].scale;
    for (c = 0; c < O; c++) {
        double s = (double)ml_channel_scale(w, c);
        int32_t bv;
        for (i = 0; i < F; i++) dst[c * F + i] = (float)((double)((const int8_t *)w->data)[c * F + i] * s);
        memcpy(&bv, b->data + 4u * c, 4);
        dst[O * F + c] = (float)((double)bv * in_scale * s);
    }
}

/* affine_params: asymmetric int8 scale/zero point covering [lo, hi], always including 0. */
static void affine_params(double lo, double hi, double *scale, int32_t *zp) {
    double z;
    lo = lo < 0.0 ? lo : 0.0;
    hi = hi > 0.0 ? hi : 0.0;
    if (hi - lo < 1e-8) hi = lo + 1e-8;
    *scale = (hi - lo) / 255.0;
    z = ml_round_half_even(-128.0 - lo / *scale);
    *zp = z < -128.0 ? -128 : (z > 127.0 ? 127 : (int32_t)z);
}

ml_status ml_train_last_layer(const ml_train_config *cfg, const int8_t *inputs, const uint8_t *labels,
                              uint32_t samples, ml_train_result *result) {
    const ml_info *info = &ml_m.info;
    const ml_op *fc;
    const ml_tensor *cut, *out_t;
    layout l;
    uint32_t O, F, P, n, e, bstart, batches, total_steps, step = 0, i, c, k;
    int8_t *feats;
    float *lut, *w, *v, *g, *wq, *z, *yb, *scales, *ex, *logs;
    uint8_t *mask;
    uint32_t *order_buf;
    double in_scale, ema_min, ema_max, loss_sum = 0.0;
    float feat_scale;
    int32_t feat_zp, lo_b, hi_b;
    uint32_t correct = 0;
    ml_pcg64 rng;

    if (!ml_loaded) return ml_fail(ML_NO_MODEL, "no model loaded");
    if (!info->trainable) return ml_fail(ML_UNSUPPORTED, "the model's last layer is not FULLY_CONNECTED -> SOFTMAX");
    if (cfg == NULL || result == NULL || inputs == NULL || labels == NULL) return ml_fail(ML_BAD_INPUT, "null argument");
    if (samples == 0) return ml_fail(ML_BAD_INPUT, "no training samples");
    if (cfg->epochs == 0 || cfg->batch_size == 0) return ml_fail(ML_BAD_INPUT, "epochs and batch size must be positive");
    for (i = 0; i < samples; i++)
        if (labels[i] >= info->classes)
            return ml_fail(ML_BAD_INPUT, "label %u of sample %u; the model has %u classes", (unsigned)labels[i],
                           (unsigned)i, (unsigned)info->classes);
    if ((uint64_t)cfg->epochs * samples > 0xffffffffu)
        return ml_fail(ML_BAD_INPUT, "%u epochs of %u samples is too many", (unsigned)cfg->epochs, (unsigned)samples);
    if (cfg->order != NULL)
        for (i = 0; i < cfg->epochs * samples; i++)
            if (cfg->order[i] >= samples) return ml_fail(ML_BAD_INPUT, "order entry %u out of range", (unsigned)i);
    n = cfg->batch_size < samples ? cfg->batch_size : samples;
    if (!plan(samples, n, cfg->order == NULL, &l) || l.total > ML_ARENA_BYTES)
        return ml_fail(ML_NO_MEMORY, "training needs %u B of arena, the firmware has %u B", (unsigned)l.total,
                       (unsigned)ML_ARENA_BYTES);

    fc = &ml_m.ops[info->cut_op];
    cut = &ml_m.tensors[fc->in[0]];
    out_t = &ml_m.tensors[fc->out];
    O = info->classes;
    F = info->feature_len;
    P = O * F + O;
    feats = (int8_t *)(ml_arena + l.feats);
    lut = (float *)(void *)(ml_arena + l.lut);
    w = (float *)(void *)(ml_arena + l.w);
    v = (float *)(void *)(ml_arena + l.v);
    g = (float *)(void *)(ml_arena + l.g);
    wq = (float *)(void *)(ml_arena + l.wq);
    z = (float *)(void *)(ml_arena + l.z);
    yb = (float *)(void *)(ml_arena + l.y);
    mask = ml_arena + l.mask;
    scales = (float *)(void *)(ml_arena + l.scales);
    ex = (float *)(void *)(ml_arena + l.ex);
    logs = (float *)(void *)(ml_arena + l.logs);
    order_buf = (uint32_t *)(void *)(ml_arena + l.order);

    /* Features: the backbone runs once per sample; its int8 output at the cut is kept. */
    for (i = 0; i < samples; i++) {
        const int8_t *x = inputs + (size_t)i * info->input_len;
        if (info->cut_op == 0) {
            memcpy(feats + (size_t)i * F, x, F);
        } else {
            ml_status st;
            memcpy(ml_arena + ml_m.tensors[ml_m.input].arena_off, x, info->input_len);
            if ((st = ml_run_ops(0, info->cut_op)) != ML_OK) return st;
            memcpy(feats + (size_t)i * F, ml_arena + cut->arena_off, F);
        }
    }
    feat_scale = cut->scale;
    feat_zp = cut->zero_point;
    in_scale = (double)cut->scale;
    /* dequantize(): ((q - zp) * scale) in double, then float32; a feature takes 256 values, so tabulate them. */
    for (i = 0; i < 256; i++) lut[i] = (float)((double)((int32_t)i - 128 - feat_zp) * (double)feat_scale);

    base_params(w);
    memset(v, 0, 4u * P);
    /* RangeStats of the output, started from its quantisation (_stats_from). */
    ema_min = (double)(-128 - out_t->zero_point) * (double)out_t->scale;
    ema_max = (double)(127 - out_t->zero_point) * (double)out_t->scale;
    if (cfg->order == NULL) ml_pcg64_seed(&rng, cfg->seed);

    batches = (samples + cfg->batch_size - 1) / cfg->batch_size;
    total_steps = cfg->epochs * batches;
    for (e = 0; e < cfg->epochs; e++) {
        const uint32_t *order;
        uint32_t b;
        if (cfg->order == NULL) {
            ml_pcg64_permutation(&rng, order_buf, samples);
            order = order_buf;
        } else {
            order = cfg->order + (size_t)e * samples;
        }
        loss_sum = 0.0;
        correct = 0;
        for (b = 0; b < batches; b++) {
            uint32_t m;
            double lr = cfg->learning_rate, a_min = INFINITY, a_max = -INFINITY, oscale;
            int32_t ozp;
            float osf, ozf, batch_loss;
            bstart = b * cfg->batch_size;
            m = samples - bstart < cfg->batch_size ? samples - bstart : cfg->batch_size;
            if (cfg->cosine_decay) {
                lr *= 0.5 * (1.0 + cos(3.141592653589793 * (double)step / (double)total_steps));
            }
            /* quantized_params: weights per row on the int8 grid, bias on in_scale x row scale. */
            for (c = 0; c < O; c++) {
                float peak = 0.0f, s;
                double bs;
                for (k = 0; k < F; k++) {
                    float a = fabsf(w[c * F + k]);
                    if (a > peak) peak = a;
                }
                s = (peak > 1e-8f ? peak : 1e-8f) / 127.0f;
                scales[c] = s;
                for (k = 0; k < F; k++) {
                    float q = rhe(w[c * F + k] / s);
                    q = q < -127.0f ? -127.0f : (q > 127.0f ? 127.0f : q);
                    wq[c * F + k] = q * s;
                }
                bs = in_scale * (double)s;
                wq[O * F + c] = (float)(ml_round_half_even((double)w[O * F + c] / bs) * bs);
            }
            /* Forward: z = x @ wq.T + bq; a = activation(z); the EMA range observes a. */
            for (i = 0; i < m; i++) {
                const int8_t *fq = feats + (size_t)order[bstart + i] * F;
                for (c = 0; c < O; c++) {
                    float acc = 0.0f, a;
                    for (k = 0; k < F; k++)
                        acc += lut[(int32_t)fq[k] + 128] * wq[c * F + k];
                    acc += wq[O * F + c];
                    z[i * O + c] = acc;
                    a = acc;
                    if (fc->activation == ACT_RELU) a = a > 0.0f ? a : 0.0f;
                    if (fc->activation == ACT_RELU6) a = a < 0.0f ? 0.0f : (a > 6.0f ? 6.0f : a);
                    yb[i * O + c] = a;
                    if ((double)a < a_min) a_min = (double)a;
                    if ((double)a > a_max) a_max = (double)a;
                }
            }
            ema_min = 0.9 * ema_min + (1.0 - 0.9) * a_min;
            ema_max = 0.9 * ema_max + (1.0 - 0.9) * a_max;
            affine_params(ema_min, ema_max, &oscale, &ozp);
            ml_activation_bounds(fc->activation, (float)oscale, ozp, &lo_b, &hi_b);
            if (fc->activation == ACT_RELU6) { /* bounds from the double scale, as activation_bounds computes */
                double top = (double)ozp + ml_round_half_even(6.0 / oscale);
                hi_b = top < 127.0 ? (int32_t)top : 127;
            }
            osf = (float)oscale;
            ozf = (float)ozp;
            /* Fake-quantise the output, softmax, loss, gradient (p - onehot) * beta / m. */
            for (i = 0; i < m; i++) {
                float *row = yb + i * O, peak = -INFINITY, sum, p_label;
                uint32_t label = labels[order[bstart + i]], arg = 0;
                for (c = 0; c < O; c++) {
                    float q = rhe(row[c] / osf) + ozf;
                    mask[i * O + c] = (q >= (float)lo_b && q <= (float)hi_b);
                    q = q < (float)lo_b ? (float)lo_b : (q > (float)hi_b ? (float)hi_b : q);
                    row[c] = ((q - ozf) * osf) * ml_m.ops[info->cut_op + 1].beta;
                    if (row[c] > peak) peak = row[c];
                }
                for (c = 0; c < O; c++) ex[c] = expf(row[c] - peak);
                sum = pairwise_f(ex, O, 1);
                for (c = 0; c < O; c++) {
                    row[c] = ex[c] / sum;
                    if (row[c] > row[arg]) arg = c;
                }
                p_label = row[label];
                logs[i] = logf(p_label + 1e-9f);
                if (arg == label) correct++;
                for (c = 0; c < O; c++) {
                    float gr = row[c] - (c == label ? 1.0f : 0.0f);
                    row[c] = (gr * ml_m.ops[info->cut_op + 1].beta) / (float)m;
                }
            }
            batch_loss = pairwise_f(logs, m, 1);
            loss_sum += -(double)batch_loss;
            /* Backward: dz = dy * mask * activation'(z); dW = dz.T @ x; db = sum over the batch. */
            memset(g, 0, 4u * P);
            for (i = 0; i < m; i++) {
                const int8_t *fq = feats + (size_t)order[bstart + i] * F;
                for (c = 0; c < O; c++) {
                    float dz = mask[i * O + c] ? yb[i * O + c] : 0.0f;
                    if (fc->activation == ACT_RELU && !(z[i * O + c] > 0.0f)) dz = 0.0f;
                    if (fc->activation == ACT_RELU6 && !(z[i * O + c] > 0.0f && z[i * O + c] < 6.0f)) dz = 0.0f;
                    if (dz == 0.0f) continue;
                    for (k = 0; k < F; k++)
                        g[c * F + k] += dz * lut[(int32_t)fq[k] + 128];
                    g[O * F + c] += dz;
                }
            }
            /* Step: momentum SGD with optional weight decay and FedProx (the base recomputed from flash). */
            if (cfg->prox_mu != 0.0f) base_params(wq); /* wq is free again: reuse it for the base */
            for (k = 0; k < P; k++) {
                float gk = g[k];
                if (cfg->weight_decay != 0.0f) gk = gk + cfg->weight_decay * w[k];
                if (cfg->prox_mu != 0.0f) gk = gk + cfg->prox_mu * (w[k] - wq[k]);
                v[k] = v[k] * cfg->momentum;
                v[k] = v[k] + gk;
                if (cfg->cosine_decay) /* numpy: float64 lr times the float32 velocity is float64 */
                    w[k] = (float)((double)w[k] - lr * (double)v[k]);
                else
                    w[k] = w[k] - (float)lr * v[k];
            }
            step++;
        }
    }
    /* delta = trained - base, in place over the trained weights. */
    base_params(wq);
    for (k = 0; k < P; k++) w[k] = w[k] - wq[k];
    result->delta_weight = w;
    result->delta_bias = w + (size_t)O * F;
    result->last_epoch_loss = (float)(loss_sum / (double)samples);
    result->last_epoch_accuracy = (float)correct / (float)samples;
    result->samples_seen = cfg->epochs * samples;
    return ML_OK;
}
