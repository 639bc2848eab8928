/* The model flash: A/B model slots, the commit record, the transfer progress and the residual.
 *
 * Layout (1 MiB, docs/firmware.md): each record lives in two copies with a sequence number and a CRC; a
 * write goes to the older copy, so power lost mid-write leaves the newer one in force (the old model or
 * the old progress, never a torn one). Slot data is written before the progress record that claims it. */
#ifndef TF_STORE_H
#define TF_STORE_H
#include <stdbool.h>
#include <stdint.h>

#define STORE_FLASH_BYTES (1024u * 1024u)
#define STORE_RECORD_AREA 0x00000u  /* commit records: 2 x 256 B */
#define STORE_PROGRESS_AREA 0x00200u /* progress records: 2 x 256 B */
#define STORE_RESIDUAL_AREA 0x01000u /* residual: 2 x 30 KiB */
#define STORE_RESIDUAL_COPY (30u * 1024u)
#define STORE_SLOT_BASE 0x10000u
#define STORE_SLOT_BYTES (480u * 1024u)

typedef struct {
    uint8_t slot;
    uint32_t size;
    uint8_t sha256[32];
} store_commit;

typedef struct {
    uint8_t version[32];
    uint32_t size;
    uint32_t written;
    uint8_t slot;
    uint8_t patch; /* 1: a patch transfer (size and written count patch bytes, kept at the slot's end) */
} store_progress;

bool store_active(store_commit *out);
bool store_set_active(const store_commit *c);
bool store_progress_load(store_progress *out);
bool store_progress_save(const store_progress *p);
void store_progress_clear(void);
uint8_t store_inactive_slot(void);
const uint8_t *store_slot(uint8_t slot);
bool store_slot_write(uint8_t slot, uint32_t offset, const uint8_t *data, uint32_t len);

/* The residual: an opaque blob (the compressor's format); len 0 when none is stored. */
const uint8_t *store_residual(uint32_t *len);
bool store_residual_save(const uint8_t *data, uint32_t len);
/* A writer for a residual blob assembled piecewise into the next copy, then sealed. */
bool store_residual_begin(void);
bool store_residual_append(const uint8_t *data, uint32_t len);
bool store_residual_seal(void);

#endif
