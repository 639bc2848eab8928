/*
 * ml.h - the neural-network part of the tinyfed firmware: int8 inference of a
 * .tflite model and on-device training of its last FULLY_CONNECTED layer.
 *
 * This header is the whole contract between the platform (UART, flash,
 * session, CBOR, compression) and the ML code. C99, no dynamic allocation:
 * every byte the ML code uses at run time is either a static of this module
 * (the arena, ML_ARENA_BYTES, plus a small fixed model table) or the caller's.
 *
 * Life cycle
 *   1. ml_load(model, len, &info)   after a MODEL_COMMIT (or at boot from the
 *      installed flash slot). The model is read IN PLACE: `model` must stay
 *      valid and unchanged (it lives in flash) until the next ml_load or
 *      ml_unload. Every byte is treated as hostile: offsets, lengths, tensor
 *      indices and shapes are bounds-checked; a bad file gives ML_BAD_MODEL,
 *      never a crash or an out-of-bounds read.
 *   2. ml_infer(in, out)            as often as wanted.
 *   3. ml_train_last_layer(...)     for a TRAIN task; the result (the float
 *      delta) lives in the arena until the next ml_* call that uses the arena
 *      (ml_infer, ml_train_last_layer, ml_load): compress/encode it first.
 *
 * Not reentrant; one model at a time. Nothing here blocks on I/O.
 *
 * Numerics
 *   Inference is bit-exact with tinyfed's numpy int8 reference
 *   (edge_runtime/model/reference.py) and TFLite Micro: TFLite's fixed-point
 *   requantisation (QuantizeMultiplier / MultiplyByQuantizedMultiplier,
 *   double rounding), TFLite's SAME-padding geometry, averaging over valid
 *   pool cells only; SOFTMAX as the reference computes it (double exp, round
 *   half to even onto the fixed 1/256, -128 output grid).
 *   Training mirrors edge_runtime/train/trainer.py with cut at the last
 *   weighted layer (what hil/board.py's _train does): features = the int8
 *   backbone's cut activation dequantised to float32; the layer trained with
 *   fake-quantised weights/bias/output (straight-through gradients, running
 *   EMA range of the output), softmax cross-entropy, SGD with momentum,
 *   optional weight decay and FedProx, cosine learning-rate decay. It
 *   matches the Python trainer's delta to float rounding (the float sums are
 *   summed in another order than BLAS does); tests/test_firmware_ml.py
 *   states the tolerance it holds to.
 */
#ifndef TINYFED_ML_H
#define TINYFED_ML_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- compile-time sizes (override with -D) -------------------------------- */

/* The one static arena: inference activations, and during training also the
 * backbone features of every sample and the float training buffers. The
 * platform sets it to what its RAM allows; ml_info says what a model needs. */
#ifndef ML_ARENA_BYTES
#define ML_ARENA_BYTES (64u * 1024u)
#endif

/* Bounds of the model table (static RAM: 60 B per tensor, 40 B per op on Cortex-M; 5,224 B at the defaults). */
#ifndef ML_MAX_TENSORS
#define ML_MAX_TENSORS 64
#endif
#ifndef ML_MAX_OPS
#define ML_MAX_OPS 32
#endif
#define ML_MAX_DIMS 4

/* ---- results -------------------------------------------------------------- */

typedef enum {
    ML_OK = 0,
    ML_BAD_MODEL = 1,   /* not a well-formed int8 .tflite: truncated, bad offsets, bad shapes... */
    ML_UNSUPPORTED = 2, /* well-formed but uses an operator, type or option this firmware lacks */
    ML_NO_MEMORY = 3,   /* needs more than ML_ARENA_BYTES (or more tensors/ops than ML_MAX_*) */
    ML_NO_MODEL = 4,    /* ml_infer/ml_train before a successful ml_load */
    ML_BAD_INPUT = 5    /* bad arguments: label out of range, zero samples, zero batch... */
} ml_status;

/* Human-readable text of the last failure (static buffer, always NUL-terminated,
 * e.g. "operator 3 MEAN: no kernel"): what the platform puts in an ERROR's detail. */
const char *ml_last_error(void);

/* ---- model information ------------------------------------------------------ */

typedef struct {
    /* Model input: int8 elements of one sample and its quantisation
     * (real = scale * (q - zero_point)). */
    uint32_t input_len;
    float input_scale;
    int32_t input_zero_point;
    /* Model output: int8 elements (the class scores of SOFTMAX: scale 1/256, zp -128). */
    uint32_t output_len;
    float output_scale;
    int32_t output_zero_point;

    /* Inference arena bytes this model needs: activations (greedy-planned) and, after them, each weighted
     * operator's per-channel requantisation (multiplier, shift), 8 B per output channel, which ml_load
     * computes and writes into the arena (as TFLite Micro's persistent buffers). Training keeps them. */
    uint32_t arena_bytes;
    uint32_t op_count;
    uint32_t tensor_count;

    /* Last-layer training. trainable = 1 when the last weighted operator is a
     * FULLY_CONNECTED whose output feeds the final SOFTMAX (tinyfed's digits MLP
     * and HAR 1D-CNN both are); else 0 and ml_train_last_layer refuses. */
    int trainable;
    uint32_t classes;      /* = out_features of that layer (= output_len) */
    uint32_t feature_len;  /* in_features: the cut activation's element count */
    uint32_t cut_op;       /* operator index of the trained FULLY_CONNECTED */
    /* The tensors an UPDATE names. wire.TensorUpdate.tensor is the TENSOR INDEX
     * in subgraph 0 (as Trainer.delta_by_tensor keys it); numel is weight_numel
     * (= classes * feature_len, layout [out][in] row-major) and bias_numel
     * (= classes). Names point into the model bytes, NOT NUL-terminated. */
    uint32_t weight_tensor;
    uint32_t bias_tensor;
    uint32_t weight_numel;
    uint32_t bias_numel;
    const char *weight_name;
    uint32_t weight_name_len;
    const char *bias_name;
    uint32_t bias_name_len;
} ml_info;

/* Parse and plan `model` (len bytes, read in place, must stay valid). On
 * success fills *info (may be NULL), writes the requantisation parameters
 * into the arena, and the model is ready. On failure the previous model is
 * unloaded too (no half-loaded state). Refuses, with ml_last_error() saying
 * why, anything the kernels cannot run, before anything runs. */
ml_status ml_load(const uint8_t *model, uint32_t len, ml_info *info);

/* Forget the loaded model (e.g. before erasing its flash slot). */
void ml_unload(void);

/* Info of the loaded model, or NULL. */
const ml_info *ml_model_info(void);

/* Total arena bytes a training task needs: inference arena + int8 features of
 * `samples` samples + float buffers for `batch_size`. 0 if not trainable.
 * Compare with ML_ARENA_BYTES (ml_train_last_layer returns ML_NO_MEMORY if
 * it does not fit; nothing is touched then). */
uint32_t ml_train_bytes(uint32_t samples, uint32_t batch_size);

/* ---- inference ---------------------------------------------------------------- */

/* One sample: `in` holds info.input_len int8 values already in the model's
 * input quantisation; `out` receives info.output_len int8 values. */
ml_status ml_infer(const int8_t *in, int8_t *out);

/* ---- training -------------------------------------------------------------------- */

/* What a TRAIN task carries, as edge_runtime/local_training.task_training maps
 * a wire.Task onto edge_runtime/train/trainer.TrainConfig. The defaults the
 * Python trainer uses: momentum 0.9, weight_decay 0, cosine_decay 1. */
typedef struct {
    uint32_t epochs;        /* task.epochs */
    uint32_t batch_size;    /* task.batch_size */
    double learning_rate;   /* task.learning_rate */
    float momentum;         /* 0.9 */
    float weight_decay;     /* 0 */
    float prox_mu;          /* task.prox_mu (FedProx pull towards the base weights) */
    int cosine_decay;       /* 1: lr * 0.5 * (1 + cos(pi * step / total_steps)) */
    uint32_t seed;          /* task.round on the Python board */
    /* Sample order. NULL: each epoch's order is drawn from `seed` exactly as
     * numpy's np.random.default_rng(seed).permutation(samples) draws it (the
     * Python trainer's generator: SeedSequence -> PCG64 -> Fisher-Yates), so
     * the same task on the same data gives the Python trainer's delta.
     * Non-NULL: epochs * samples indices, epoch after epoch (tests/replays). */
    const uint32_t *order;
} ml_train_config;

/* Initialise *cfg with the Python trainer's defaults (epochs 5, batch 32,
 * lr 0.05, momentum 0.9, cosine decay, seed 0, order NULL). */
void ml_train_config_default(ml_train_config *cfg);

typedef struct {
    /* delta = trained - base, float32, in Trainer.delta_by_tensor's layout and
     * units (real-valued, not quantised): weight [classes][feature_len]
     * row-major, bias [classes]. Pointers into the arena: valid until the next
     * ml_* call that uses the arena. */
    const float *delta_weight;
    const float *delta_bias;
    float last_epoch_loss;     /* mean cross-entropy of the last epoch (train_loss) */
    float last_epoch_accuracy; /* fraction correct during the last epoch */
    uint32_t samples_seen;     /* epochs * samples */
} ml_train_result;

/* Train the last FULLY_CONNECTED layer on `samples` samples: `inputs` holds
 * samples * info.input_len int8 values in the model's input quantisation
 * (may live in flash), `labels` one class index per sample (< info.classes).
 * The backbone runs once per sample (features cached in the arena). */
ml_status ml_train_last_layer(const ml_train_config *cfg, const int8_t *inputs, const uint8_t *labels,
                              uint32_t samples, ml_train_result *result);

/* ---- capabilities ------------------------------------------------------------ */

/* TFLite BuiltinOperator codes this firmware has kernels for (HELLO's op list). */
extern const uint8_t ml_supported_ops[];
extern const uint32_t ml_supported_op_count;

#ifdef __cplusplus
}
#endif

#endif /* TINYFED_ML_H */
