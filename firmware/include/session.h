/* The board's side of the serial protocol's session (docs/serial-protocol.md "Session"). */
#ifndef TF_SESSION_H
#define TF_SESSION_H
#include <stdint.h>

#define FIRMWARE_NAME "tinyfed-c 0.1"

/* Boots from flash (loads the installed model), announces the reset, then serves requests forever. */
void session_main(uint8_t reset_reason) __attribute__((noreturn));

/* RAM figures from the linker (platform) for HELLO's LOG and STATUS. `reserved` is RAM outside every section
 * (the reset reason): part of `ram`, never free. */
typedef struct {
    uint32_t ram, data, bss, stack, stack_used, reserved;
} ram_figures;
void plat_ram_figures(ram_figures *out);

#endif
