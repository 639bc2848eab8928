/* ml_internal.h - the loaded model's table, shared by the loader, the kernels and the trainer. */
#ifndef TINYFED_ML_INTERNAL_H
#define TINYFED_ML_INTERNAL_H

#include <stdint.h>

#include "fb.h"
#include "ml.h"

/* TFLite BuiltinOperator codes (schema.fbs). */
enum {
    OP_ADD = 0,
    OP_AVERAGE_POOL_2D = 1,
    OP_CONV_2D = 3,
    OP_DEPTHWISE_CONV_2D = 4,
    OP_DEQUANTIZE = 6,
    OP_FULLY_CONNECTED = 9,
    OP_MAX_POOL_2D = 17,
    OP_RELU = 19,
    OP_RESHAPE = 22,
    OP_SOFTMAX = 25,
    OP_MEAN = 40,
    OP_EXPAND_DIMS = 70,
    OP_QUANTIZE = 114
};

/* TensorType codes. */
enum { TT_FLOAT32 = 0, TT_INT32 = 2, TT_UINT8 = 3, TT_INT64 = 4, TT_INT16 = 7, TT_INT8 = 9 };
enum { PAD_SAME = 0, PAD_VALID = 1 };
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU_N1_TO_1 = 2, ACT_RELU6 = 3 };

#define ML_NONE (-1)

typedef struct {
    uint8_t type;
    uint8_t ndims;
    uint8_t is_const;
    uint8_t per_channel;    /* scale vector longer than 1 */
    int32_t dims[ML_MAX_DIMS];
    uint32_t numel;
    const uint8_t *data;    /* constant data inside the model, else NULL */
    uint32_t arena_off;     /* activations: offset in the arena */
    float scale;            /* first (or only) scale; 0 when unquantised */
    int32_t zero_point;
    uint32_t scales_pos;    /* position of the float scale vector in the model (per channel) */
    uint32_t scales_count;
    const char *name;
    uint32_t name_len;
    int16_t first_use;      /* activations: op producing it (-1: graph input) */
    int16_t last_use;       /* last op reading it (op_count: graph output) */
} ml_tensor;

typedef struct {
    uint8_t code;
    uint8_t padding;
    uint8_t activation;
    uint8_t n_in;
    int16_t in[3];
    int16_t out;
    uint16_t stride_h, stride_w, dil_h, dil_w, filt_h, filt_w;
    uint16_t depth_mult;
    int16_t pad_h, pad_w;   /* leading padding, computed at load */
    uint32_t quant_off;     /* weighted ops: arena offset of (multiplier, shift) int32 pairs per output channel */
    float beta;
} ml_op;

typedef struct {
    fb_buf buf;
    ml_info info;
    uint32_t n_tensors, n_ops;
    int16_t input, output;
    ml_tensor tensors[ML_MAX_TENSORS];
    ml_op ops[ML_MAX_OPS];
} ml_model;

extern ml_model ml_m;
extern int ml_loaded;
extern uint8_t ml_arena[ML_ARENA_BYTES];

/* Record a failure's text (printf-like, small subset: %s %d %u). Returns st. */
ml_status ml_fail(ml_status st, const char *fmt, ...);

/* Scale of channel c of tensor t (per-channel or the single one). */
float ml_channel_scale(const ml_tensor *t, uint32_t c);

/* Run operators [first, last) on the arena (input already in place). */
ml_status ml_run_ops(uint32_t first, uint32_t last);

/* Fixed-point requantisation, exactly as TFLite's reference kernels. */
void ml_quantize_multiplier(double real, int32_t *mult, int *shift);
int32_t ml_mbqm(int64_t acc, int32_t mult, int shift);
double ml_round_half_even(double x);
void ml_activation_bounds(uint8_t act, float scale, int32_t zp, int32_t *lo, int32_t *hi);

/* numpy's default_rng(seed).permutation(n), drawn epoch after epoch. */
typedef struct {
    uint64_t state_hi, state_lo, inc_hi, inc_lo;
    int has_uint32;
    uint32_t uinteger;
} ml_pcg64;
void ml_pcg64_seed(ml_pcg64 *rng, uint32_t seed);
void ml_pcg64_permutation(ml_pcg64 *rng, uint32_t *out, uint32_t n);
uint64_t ml_pcg64_next64(ml_pcg64 *rng);

#endif
