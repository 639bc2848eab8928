#include "dataset.h"

#include <string.h>

static uint32_t u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

bool dataset_open(const uint8_t *blob, uint32_t len, dataset *d)
{
    if (blob == NULL || len < 24 || memcmp(blob, "TFDS", 4) != 0 || u32(blob + 4) != 1)
        return false;
    d->features = u32(blob + 8);
    d->classes = u32(blob + 12);
    d->n_train = u32(blob + 16);
    d->n_eval = u32(blob + 20);
    uint64_t need = 24 + ((uint64_t)d->features * 4 + 1) * ((uint64_t)d->n_train + d->n_eval);
    if (d->features == 0 || need > len)
        return false;
    d->train_x = blob + 24;
    d->train_y = d->train_x + (uint64_t)d->n_train * d->features * 4;
    d->eval_x = d->train_y + d->n_train;
    d->eval_y = d->eval_x + (uint64_t)d->n_eval * d->features * 4;
    if (need + 4 > len)
        return false;
    d->names_len = u32(blob + need);
    if (need + 4 + d->names_len > len)
        return false;
    d->names = (const char *)blob + need + 4;
    return true;
}

float dataset_value(const uint8_t *x, uint32_t i)
{
    uint32_t bits = u32(x + 4 * (uint64_t)i);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
