/* COBS (Cheshire and Baker, 1999): frames without zero bytes, so 0x00 only ever ends one. */
#ifndef TF_COBS_H
#define TF_COBS_H
#include <stddef.h>
#include <stdint.h>

/* Largest encoding of n bytes (without the delimiter). */
#define TF_COBS_MAX(n) ((n) + (n) / 254 + 1)

/* Encodes src into dst (at most TF_COBS_MAX(len) bytes, no delimiter); returns the encoded length,
 * 0 if cap is too small. */
size_t tf_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* Decodes in place is allowed (dst == src). Returns the decoded length, or -1 if the input is not COBS
 * (a zero byte, or a code running past the end). */
long tf_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst);

#endif
