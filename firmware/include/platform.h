/* What the firmware needs of a chip: a UART, a millisecond clock, a reset, and a flash region.
 * platform/mps2/ implements it for QEMU's MPS2 boards; host/ implements it for unit tests. */
#ifndef TF_PLATFORM_H
#define TF_PLATFORM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void plat_init(void);
/* A received byte, or -1 if none is waiting (never blocks). */
int plat_getc(void);
void plat_write(const uint8_t *data, size_t len);
uint32_t plat_millis(void);
/* Monotonic count for cost figures: instructions or cycles where the machine has a counter (see plat_counter_name). */
uint64_t plat_counter(void);
#define PLAT_COUNTER_MHZ 25u /* plat_counter ticks per microsecond */
const char *plat_counter_name(void);
/* Resets the chip; RAM is lost except what plat_reset_reason reads back. Never returns. */
void plat_reset(uint8_t reason) __attribute__((noreturn));
/* Why this boot happened: 0 requested, 1 watchdog, 2 brown-out, 3 power-on. */
uint8_t plat_reset_reason(void);

/* The model/data flash: readable as memory, written through plat_flash_write (which may also persist it). */
const uint8_t *plat_flash(void);
uint32_t plat_flash_size(void);
bool plat_flash_write(uint32_t offset, const uint8_t *data, uint32_t len);

/* The board's local training data (read-only), or NULL. */
const uint8_t *plat_dataset(uint32_t *len);
/* Writable external memory for buffers too large for RAM (the int8 copy of the training data), or NULL. */
uint8_t *plat_scratch(uint32_t *len);
/* A unique id of this chip (its serial number), as text. */
const char *plat_board_id(void);
/* Stack bytes never touched since boot (the stack was painted at start-up). */
uint32_t plat_stack_unused(void);

#endif
