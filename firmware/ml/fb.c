/* fb.c - bounded flatbuffer reads (see fb.h). All positions are byte offsets from the buffer start. */
#include "fb.h"

#include <string.h>

int fb_in(const fb_buf *b, uint32_t pos, uint32_t size) {
    return pos <= b->len && size <= b->len - pos;
}

uint32_t fb_u32(const fb_buf *b, uint32_t pos) {
    uint8_t v[4];
    memcpy(v, b->base + pos, 4);
    return (uint32_t)v[0] | ((uint32_t)v[1] << 8) | ((uint32_t)v[2] << 16) | ((uint32_t)v[3] << 24);
}

int32_t fb_i32(const fb_buf *b, uint32_t pos) {
    uint32_t u = fb_u32(b, pos);
    int32_t s;
    memcpy(&s, &u, 4);
    return s;
}

uint16_t fb_u16(const fb_buf *b, uint32_t pos) {
    return (uint16_t)(b->base[pos] | (b->base[pos + 1] << 8));
}

uint64_t fb_u64(const fb_buf *b, uint32_t pos) {
    return (uint64_t)fb_u32(b, pos) | ((uint64_t)fb_u32(b, pos + 4) << 32);
}

int64_t fb_i64(const fb_buf *b, uint32_t pos) {
    uint64_t u = fb_u64(b, pos);
    int64_t s;
    memcpy(&s, &u, 8);
    return s;
}

float fb_f32(const fb_buf *b, uint32_t pos) {
    uint32_t u = fb_u32(b, pos);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int fb_table_at(const fb_buf *b, uint32_t pos, fb_table *t) {
    int32_t soff;
    int64_t vt;
    memset(t, 0, sizeof *t);
    if (pos == 0 || !fb_in(b, pos, 4)) return 0;
    soff = fb_i32(b, pos);
    vt = (int64_t)pos - (int64_t)soff;
    if (vt < 0 || !fb_in(b, (uint32_t)vt, 4)) return 0;
    t->pos = pos;
    t->vt = (uint32_t)vt;
    t->vt_size = fb_u16(b, t->vt);
    t->size = fb_u16(b, t->vt + 2);
    if (t->vt_size < 4 || (t->vt_size & 1u) || !fb_in(b, t->vt, t->vt_size)) return 0;
    if (t->size < 4 || !fb_in(b, pos, t->size)) return 0;
    return 1;
}

int fb_root(const fb_buf *b, const char *ident, fb_table *t) {
    if (!fb_in(b, 0, 8)) return 0;
    if (ident != NULL && memcmp(b->base + 4, ident, 4) != 0) return 0;
    return fb_table_at(b, fb_u32(b, 0), t);
}

uint32_t fb_field(const fb_buf *b, const fb_table *t, unsigned id, uint32_t size) {
    uint32_t slot = 4u + 2u * id;
    uint16_t off;
    if (t->pos == 0 || slot + 2u > t->vt_size) return 0;
    off = fb_u16(b, t->vt + slot);
    if (off == 0) return 0;
    if ((uint32_t)off + size > t->size) return 0xFFFFFFFFu; /* field past the table: corrupt */
    return t->pos + off;
}

#define FB_SCALAR(name, type, size, reader)                                          \
    int name(const fb_buf *b, const fb_table *t, unsigned id, type dflt, type *out) { \
        uint32_t p = fb_field(b, t, id, size);                                       \
        if (p == 0xFFFFFFFFu) return 0;                                              \
        *out = p ? (type)reader : dflt;                                              \
        return 1;                                                                    \
    }

FB_SCALAR(fb_get_u8, uint8_t, 1, b->base[p])
FB_SCALAR(fb_get_i32, int32_t, 4, fb_i32(b, p))
FB_SCALAR(fb_get_u32, uint32_t, 4, fb_u32(b, p))
FB_SCALAR(fb_get_u64, uint64_t, 8, fb_u64(b, p))
FB_SCALAR(fb_get_f32, float, 4, fb_f32(b, p))

/* Follow the uoffset stored at field `id`: 0 absent, 1 found (*target), -1 corrupt. */
static int follow(const fb_buf *b, const fb_table *t, unsigned id, uint32_t *target) {
    uint32_t p = fb_field(b, t, id, 4), off;
    if (p == 0xFFFFFFFFu) return -1;
    if (p == 0) return 0;
    off = fb_u32(b, p);
    if (off == 0 || off > b->len - p) return -1;
    *target = p + off;
    return 1;
}

int fb_get_table(const fb_buf *b, const fb_table *t, unsigned id, fb_table *out) {
    uint32_t pos = 0;
    int r = follow(b, t, id, &pos);
    memset(out, 0, sizeof *out);
    if (r < 0) return 0;
    if (r == 0) return 1;
    return fb_table_at(b, pos, out);
}

int fb_get_vec(const fb_buf *b, const fb_table *t, unsigned id, uint32_t elem_size, fb_vec *out) {
    uint32_t pos = 0, count;
    int r = follow(b, t, id, &pos);
    out->pos = 0;
    out->count = 0;
    if (r < 0) return 0;
    if (r == 0) return 1;
    if (!fb_in(b, pos, 4)) return 0;
    count = fb_u32(b, pos);
    if (elem_size && count > (b->len - pos - 4) / elem_size) return 0;
    out->pos = pos + 4;
    out->count = count;
    return 1;
}

int fb_get_str(const fb_buf *b, const fb_table *t, unsigned id, const char **s, uint32_t *n) {
    fb_vec v;
    *s = "";
    *n = 0;
    if (!fb_get_vec(b, t, id, 1, &v)) return 0;
    if (v.pos) {
        *s = (const char *)(b->base + v.pos);
        *n = v.count;
    }
    return 1;
}

int fb_vec_table(const fb_buf *b, const fb_vec *v, uint32_t i, fb_table *out) {
    uint32_t p, off;
    if (i >= v->count) return 0;
    p = v->pos + 4u * i;
    off = fb_u32(b, p);
    if (off == 0 || off > b->len - p) return 0;
    return fb_table_at(b, p + off, out);
}
