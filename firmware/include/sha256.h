/* SHA-256 (FIPS 180-4): the model version is the sha256 of its bytes, checked before a commit. */
#ifndef TF_SHA256_H
#define TF_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t block[64];
    uint32_t used;
} tf_sha256_ctx;

void tf_sha256_init(tf_sha256_ctx *s);
void tf_sha256_update(tf_sha256_ctx *s, const uint8_t *data, size_t len);
void tf_sha256_final(tf_sha256_ctx *s, uint8_t out[32]);
void tf_sha256(const uint8_t *data, size_t len, uint8_t out[32]);

#endif
