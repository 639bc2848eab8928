/* A small, bounded CBOR (RFC 8949) reader and canonical writer for the serial protocol's messages.
 *
 * The writer emits what cbor2's canonical mode emits for the same values (shortest heads, the shortest
 * float that holds the value exactly), so a board's UPDATE re-encodes to the same bytes on the host.
 * The reader takes definite lengths only (tinyfed's messages are canonical) and never recurses: skipping
 * an item counts the items still owed, so a hostile nesting depth costs nothing but a counter. */
#ifndef TF_CBOR_H
#define TF_CBOR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { CBOR_UINT = 0, CBOR_NINT = 1, CBOR_BYTES = 2, CBOR_TEXT = 3, CBOR_ARRAY = 4, CBOR_MAP = 5, CBOR_TAG = 6,
       CBOR_SIMPLE = 7 };

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool overflow; /* set once anything did not fit; the message is then not sent */
} cbor_writer;

void cbor_w_init(cbor_writer *w, uint8_t *buf, size_t cap);
void cbor_w_head(cbor_writer *w, uint8_t major, uint64_t value);
void cbor_w_uint(cbor_writer *w, uint64_t v);
void cbor_w_int(cbor_writer *w, int64_t v);
void cbor_w_bytes(cbor_writer *w, const uint8_t *data, size_t len);
void cbor_w_text(cbor_writer *w, const char *text);
void cbor_w_text_n(cbor_writer *w, const char *text, size_t len);
void cbor_w_bool(cbor_writer *w, bool v);
/* The shortest of float16/float32 that holds v exactly (cbor2 canonical); v is a float32 value. */
void cbor_w_float(cbor_writer *w, float v);
/* The head of a byte string of len bytes whose contents the caller appends with cbor_w_raw. */
void cbor_w_raw(cbor_writer *w, const uint8_t *data, size_t len);

typedef struct {
    const uint8_t *p;   /* the item's head */
    uint8_t major;
    uint8_t info;       /* additional information (for simple values and floats) */
    uint64_t value;     /* the argument: integer, length, count or tag */
    const uint8_t *data; /* strings: their bytes */
    const uint8_t *next; /* first byte after the head (after the string's bytes for strings) */
} cbor_item;

/* Reads one item's head at p (end exclusive). false if truncated or not definite-length. */
bool cbor_head(const uint8_t *p, const uint8_t *end, cbor_item *it);
/* The first byte after the whole item at p (nested items included), NULL if malformed; max_items bounds
 * the items walked. */
const uint8_t *cbor_skip(const uint8_t *p, const uint8_t *end, uint32_t max_items);

/* A map's entries with small unsigned keys, found once: vals[k] is the value item of key k (k < nkeys), or
 * has p == NULL. Other keys are ignored. false if the item is not a well-formed map. */
bool cbor_map_index(const uint8_t *p, const uint8_t *end, cbor_item *vals, unsigned nkeys);

bool cbor_get_uint(const cbor_item *it, uint64_t max, uint64_t *out);
bool cbor_get_bytes(const cbor_item *it, const uint8_t **data, size_t *len);
bool cbor_get_text(const cbor_item *it, const char **text, size_t *len);
bool cbor_get_bool(const cbor_item *it, bool *out);
/* Integers and float16/32/64 as a double. */
bool cbor_get_number(const cbor_item *it, double *out);
/* An RFC 8746 typed array with the given tag: its payload. */
bool cbor_get_typed(const cbor_item *it, const uint8_t *end, uint64_t tag, const uint8_t **data, size_t *len);

#endif
