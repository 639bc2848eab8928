/* The board's local training data, as `tinyfed hil qemu` writes it from the data the Python board uses
 * (hil/qemu.py writes it, the QEMU loader puts it in the board's external memory).
 *
 * Little-endian: magic "TFDS", u32 version 1, u32 features, u32 classes, u32 n_train, u32 n_eval, then
 * n_train x features float32, n_train u8 labels, n_eval x features float32, n_eval u8 labels, u32 names_len and the
 * class names joined by newlines. Labels index those names; the board maps them onto the model's classes. */
#ifndef TF_DATASET_H
#define TF_DATASET_H
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t features, classes, n_train, n_eval;
    const uint8_t *train_x, *train_y, *eval_x, *eval_y; /* x: float32 little-endian, unaligned-safe reads */
    const char *names;
    uint32_t names_len;
} dataset;

bool dataset_open(const uint8_t *blob, uint32_t len, dataset *out);
float dataset_value(const uint8_t *x, uint32_t i);

#endif
