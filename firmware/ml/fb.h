/*
 * fb.h - a bounded, read-only flatbuffer reader: just what the TFLite schema needs.
 *
 * Every accessor checks that what it reads lies inside the buffer and
 * reports failure instead of reading past it: the model comes over a serial
 * line and may be truncated or hostile. Reads go through memcpy, so the model
 * may sit at any alignment in flash.
 */
#ifndef TINYFED_FB_H
#define TINYFED_FB_H

#include <stdint.h>

typedef struct {
    const uint8_t *base;
    uint32_t len;
} fb_buf;

/* A table: its position, its vtable's position and size (0 pos = absent). */
typedef struct {
    uint32_t pos;
    uint32_t vt;
    uint16_t vt_size;
    uint16_t size;
} fb_table;

/* A vector: element count and the position of its first element. */
typedef struct {
    uint32_t pos;
    uint32_t count;
} fb_vec;

uint32_t fb_u32(const fb_buf *b, uint32_t pos); /* caller has bounds-checked pos..pos+4 */
int32_t fb_i32(const fb_buf *b, uint32_t pos);
uint16_t fb_u16(const fb_buf *b, uint32_t pos);
int64_t fb_i64(const fb_buf *b, uint32_t pos);
uint64_t fb_u64(const fb_buf *b, uint32_t pos);
float fb_f32(const fb_buf *b, uint32_t pos);

int fb_in(const fb_buf *b, uint32_t pos, uint32_t size); /* 1 when [pos, pos+size) is inside */

/* Open the table at `pos`; 0 when its vtable or extent is out of bounds. */
int fb_table_at(const fb_buf *b, uint32_t pos, fb_table *t);
/* The root table (offset at byte 0); checks the 4-byte identifier at byte 4 when ident != NULL. */
int fb_root(const fb_buf *b, const char *ident, fb_table *t);

/* Position of field `id`'s scalar, or 0 when absent (default applies) or out of the table. */
uint32_t fb_field(const fb_buf *b, const fb_table *t, unsigned id, uint32_t size);

/* Scalars with defaults; return 0 (error) only for a field lying out of bounds. */
int fb_get_u8(const fb_buf *b, const fb_table *t, unsigned id, uint8_t dflt, uint8_t *out);
int fb_get_i32(const fb_buf *b, const fb_table *t, unsigned id, int32_t dflt, int32_t *out);
int fb_get_u32(const fb_buf *b, const fb_table *t, unsigned id, uint32_t dflt, uint32_t *out);
int fb_get_u64(const fb_buf *b, const fb_table *t, unsigned id, uint64_t dflt, uint64_t *out);
int fb_get_f32(const fb_buf *b, const fb_table *t, unsigned id, float dflt, float *out);

/* Offset fields. Return 1 and fill *out (pos 0 / count 0 when absent), 0 when corrupt. */
int fb_get_table(const fb_buf *b, const fb_table *t, unsigned id, fb_table *out);
int fb_get_vec(const fb_buf *b, const fb_table *t, unsigned id, uint32_t elem_size, fb_vec *out);
/* A string: pointer into the buffer (not NUL-terminated) and its length. */
int fb_get_str(const fb_buf *b, const fb_table *t, unsigned id, const char **s, uint32_t *n);
/* Element `i` of a vector of tables. */
int fb_vec_table(const fb_buf *b, const fb_vec *v, uint32_t i, fb_table *out);

#endif
