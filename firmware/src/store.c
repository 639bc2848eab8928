/* Two-copy records over plat_flash (see store.h for the layout and why). */
#include "store.h"

#include <string.h>

#include "crc32.h"
#include "platform.h"

#define MAGIC 0x54465231u /* "TFR1" */

typedef struct {
    uint32_t magic;
    uint32_t seq;
    uint32_t len;
    uint32_t crc;
} rec_header;

static bool rec_valid(uint32_t at, uint32_t copy_bytes, rec_header *h)
{
    const uint8_t *f = plat_flash();
    memcpy(h, f + at, sizeof *h);
    if (h->magic != MAGIC || h->len > copy_bytes - sizeof *h)
        return false;
    return tf_crc32(0, f + at + sizeof *h, h->len) == h->crc;
}

/* The newest valid copy's offset (of its data) and length; false if neither is valid. */
static bool rec_newest(uint32_t area, uint32_t copy_bytes, uint32_t *data_at, uint32_t *len, uint32_t *seq)
{
    rec_header a, b;
    bool va = rec_valid(area, copy_bytes, &a), vb = rec_valid(area + copy_bytes, copy_bytes, &b);
    if (!va && !vb)
        return false;
    bool use_b = vb && (!va || (int32_t)(b.seq - a.seq) > 0);
    *data_at = (use_b ? area + copy_bytes : area) + (uint32_t)sizeof(rec_header);
    *len = use_b ? b.len : a.len;
    if (seq)
        *seq = use_b ? b.seq : a.seq;
    return true;
}

/* Where the next write goes: the copy that is not the newest. */
static uint32_t rec_target(uint32_t area, uint32_t copy_bytes, uint32_t *next_seq)
{
    uint32_t data_at, len, seq;
    if (!rec_newest(area, copy_bytes, &data_at, &len, &seq)) {
        *next_seq = 1;
        return area;
    }
    *next_seq = seq + 1;
    return data_at - (uint32_t)sizeof(rec_header) == area ? area + copy_bytes : area;
}

static bool rec_write(uint32_t area, uint32_t copy_bytes, const void *data, uint32_t len)
{
    if (len > copy_bytes - sizeof(rec_header))
        return false;
    uint32_t seq;
    uint32_t at = rec_target(area, copy_bytes, &seq);
    rec_header h = {MAGIC, seq, len, tf_crc32(0, data, len)};
    /* data first, then the header that makes it valid */
    return plat_flash_write(at + (uint32_t)sizeof h, data, len) && plat_flash_write(at, (const uint8_t *)&h, sizeof h);
}

static bool rec_read(uint32_t area, uint32_t copy_bytes, void *out, uint32_t len)
{
    uint32_t at, n;
    if (!rec_newest(area, copy_bytes, &at, &n, NULL) || n != len)
        return false;
    memcpy(out, plat_flash() + at, len);
    return true;
}

bool store_active(store_commit *out)
{
    return rec_read(STORE_RECORD_AREA, 256, out, sizeof *out) && out->slot < 2 && out->size <= STORE_SLOT_BYTES;
}

bool store_set_active(const store_commit *c) { return rec_write(STORE_RECORD_AREA, 256, c, sizeof *c); }

bool store_progress_load(store_progress *out)
{
    return rec_read(STORE_PROGRESS_AREA, 256, out, sizeof *out) && out->slot < 2 && out->written <= out->size &&
           out->size <= STORE_SLOT_BYTES;
}

bool store_progress_save(const store_progress *p) { return rec_write(STORE_PROGRESS_AREA, 256, p, sizeof *p); }

void store_progress_clear(void)
{
    store_progress none;
    memset(&none, 0, sizeof none);
    none.slot = 0xFF; /* a record that never matches a transfer */
    rec_write(STORE_PROGRESS_AREA, 256, &none, sizeof none);
}

uint8_t store_inactive_slot(void)
{
    store_commit c;
    return store_active(&c) ? (uint8_t)(1 - c.slot) : 0;
}

const uint8_t *store_slot(uint8_t slot) { return plat_flash() + STORE_SLOT_BASE + (uint32_t)slot * STORE_SLOT_BYTES; }

bool store_slot_write(uint8_t slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (slot > 1 || offset > STORE_SLOT_BYTES || len > STORE_SLOT_BYTES - offset)
        return false;
    return plat_flash_write(STORE_SLOT_BASE + (uint32_t)slot * STORE_SLOT_BYTES + offset, data, len);
}

const uint8_t *store_residual(uint32_t *len)
{
    uint32_t at;
    if (!rec_newest(STORE_RESIDUAL_AREA, STORE_RESIDUAL_COPY, &at, len, NULL)) {
        *len = 0;
        return NULL;
    }
    return plat_flash() + at;
}

bool store_residual_save(const uint8_t *data, uint32_t len)
{
    return rec_write(STORE_RESIDUAL_AREA, STORE_RESIDUAL_COPY, data, len);
}

static uint32_t pending_at, pending_len, pending_seq;
static uint32_t pending_crc;
static bool pending_ok;

bool store_residual_begin(void)
{
    pending_at = rec_target(STORE_RESIDUAL_AREA, STORE_RESIDUAL_COPY, &pending_seq);
    pending_len = 0;
    pending_crc = 0;
    pending_ok = true;
    rec_header invalid = {0, 0, 0, 0};
    return plat_flash_write(pending_at, (const uint8_t *)&invalid, sizeof invalid);
}

bool store_residual_append(const uint8_t *data, uint32_t len)
{
    if (!pending_ok || len > STORE_RESIDUAL_COPY - sizeof(rec_header) - pending_len)
        return pending_ok = false;
    pending_ok = plat_flash_write(pending_at + (uint32_t)sizeof(rec_header) + pending_len, data, len);
    pending_crc = tf_crc32(pending_crc, data, len);
    pending_len += len;
    return pending_ok;
}

bool store_residual_seal(void)
{
    if (!pending_ok)
        return false;
    rec_header h = {MAGIC, pending_seq, pending_len, pending_crc};
    return plat_flash_write(pending_at, (const uint8_t *)&h, sizeof h);
}
