/* Top-k with error feedback and the UPDATE's tensor entries, as edge_runtime/compress and
 * edge_runtime/wire/update.py make them: the same selection, quantisation, clipping, index and value
 * codings and canonical CBOR, so the host decodes and re-encodes a board's update to the same bytes. */
#ifndef TF_UPDATE_H
#define TF_UPDATE_H
#include <stdbool.h>
#include <stdint.h>

#include "cbor.h"

#define UPD_MAX_PARAMS 4096 /* entries of the trained layer (weight + bias) the buffers hold */
#define UPD_MAX_TENSORS 2

enum { VC_FLOAT32 = 0, VC_FLOAT16 = 1, VC_INT8 = 2, VC_TERNARY = 3, VC_INT8_RICE = 4 };
enum { IC_DENSE = 0, IC_BITMAP = 1, IC_VARINT = 2, IC_RICE = 3 };

typedef struct {
    uint32_t tensor, numel, offset; /* offset into the accumulated vector */
    uint32_t nnz;
    float scale;
} upd_part;

typedef struct {
    upd_part parts[UPD_MAX_TENSORS];
    uint32_t nparts, total;
    uint8_t value_coding;
    double norm;      /* L2 of delta plus residual, before clipping */
    int below_clip;   /* -1: no clip asked; else 0/1 */
} upd_state;

void upd_begin(upd_state *st, uint8_t value_coding);
/* Appends one tensor's float delta (numel values). false if the buffers are too small. */
bool upd_add(upd_state *st, uint32_t tensor, uint32_t numel, const float *delta);
/* Adds the stored residual (blob from upd_residual_*): tensors whose size differs are dropped. */
void upd_apply_residual(upd_state *st, const uint8_t *blob, uint32_t len);
/* Clip (clip > 0), select the global top-k (density), quantise; false on a non-finite delta. */
bool upd_compress(upd_state *st, double density, double clip);
/* Number of tensor entries that will be written (tensors with at least one kept entry). */
uint32_t upd_entries(const upd_state *st);
/* Writes the array of tensor-update maps. */
void upd_encode_tensors(const upd_state *st, cbor_writer *w);
/* The residual (what was not sent) as a blob: calls put for consecutive pieces. */
typedef bool (*upd_put_fn)(const uint8_t *data, uint32_t len);
bool upd_residual_write(const upd_state *st, upd_put_fn put);
/* Bytes of RAM the buffers take (the RAM budget counts them). */
uint32_t upd_buffer_bytes(void);

/* Pure codings, unit-tested against the Python ones. */
uint32_t upd_best_rice_k(const uint16_t *gaps, uint32_t n);

#endif
