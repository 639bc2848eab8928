/* QEMU's MPS2 AN385/AN386: vector table, start-up, CMSDK UART0 (QEMU's -serial), SysTick, reset, flash.
 *
 * What survives what (QEMU keeps RAM contents across a guest reset and re-loads only the ELF and the
 * -device loader images):
 * - the model flash (1 MiB of SSRAM1 at 0x00100000, outside the firmware image) survives a reset requested
 *   by the host or the firmware (SYSRESETREQ); it is lost when the QEMU process ends unless QEMU was started
 *   with the flash file (hil/qemu.py), which this code then keeps in step through semihosting writes;
 * - the reset reason lives in the last 256 bytes of RAM, outside every linker section;
 * - the board image (id and training data) is re-loaded by QEMU at every reset; read-only to the firmware. */
#include <stdint.h>
#include <string.h>

#include "platform.h"
#include "session.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define UART0 0x40004000u
#define UART_DATA REG(UART0 + 0x00)
#define UART_STATE REG(UART0 + 0x04)
#define UART_CTRL REG(UART0 + 0x08)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_AIRCR REG(0xE000ED0Cu)
#define SCB_CPACR REG(0xE000ED88u)
#define CPU_HZ 25000000u

#define MODEL_FLASH ((uint8_t *)0x00100000u)
#define MODEL_FLASH_BYTES (1024u * 1024u)
#define IMAGE ((const uint8_t *)0x21000000u) /* board image: "TFBI", u32 version, char id[56], u32 len, data */
#define SCRATCH ((uint8_t *)0x21800000u)
#define SCRATCH_BYTES (8u * 1024u * 1024u)
#define PERSIST ((volatile uint32_t *)0x2003FF00u) /* magic, reason, flash-file handle + 1 */
#define PERSIST_MAGIC 0x52535431u

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_limit, __stack_top;
extern uint32_t __ram_start, __ram_end, __persist_start;

static volatile uint32_t millis;
static uint8_t boot_reason;
static int flash_file = -1;

void SysTick_Handler(void) { millis++; }

/* -- semihosting: the flash file, when QEMU was started with it ---------------------------------------------- */
static int semihost(int op, void *arg)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int image_flags(void) { return memcmp(IMAGE, "TFBI", 4) == 0 ? (int)IMAGE[64 + 4] : 0; }

static void flash_file_open(void)
{
    /* The flash file's name is in the board image; flag bit 0 says semihosting is on. */
    if (!(image_flags() & 1))
        return;
    const char *name = (const char *)IMAGE + 72;
    uint32_t args[3] = {(uint32_t)name, 3 /* "r+b" */, (uint32_t)strlen(name)};
    flash_file = semihost(0x01, args);
    if (flash_file < 0)
        return;
    uint32_t len_args[1] = {(uint32_t)flash_file};
    int len = semihost(0x0C, len_args);
    if (len == (int)MODEL_FLASH_BYTES) {
        uint32_t read_args[3] = {(uint32_t)flash_file, (uint32_t)MODEL_FLASH, MODEL_FLASH_BYTES};
        semihost(0x06, read_args); /* power-on: flash comes from the file */
    }
}

const uint8_t *plat_flash(void) { return MODEL_FLASH; }
uint32_t plat_flash_size(void) { return MODEL_FLASH_BYTES; }

bool plat_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (offset > MODEL_FLASH_BYTES || len > MODEL_FLASH_BYTES - offset)
        return false;
    memmove(MODEL_FLASH + offset, data, len);
    if (flash_file >= 0) {
        uint32_t seek[2] = {(uint32_t)flash_file, offset};
        uint32_t write[3] = {(uint32_t)flash_file, (uint32_t)(MODEL_FLASH + offset), len};
        if (semihost(0x0A, seek) != 0 || semihost(0x05, write) != 0)
            return false;
    }
    return true;
}

/* -- UART, clock, reset ----------------------------------------------------------------------------------------- */
int plat_getc(void)
{
    if (UART_STATE & 2u)
        return (int)(UART_DATA & 0xFFu);
    return -1;
}

void plat_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (UART_STATE & 1u) {
        }
        UART_DATA = data[i];
    }
}

uint32_t plat_millis(void) { return millis; }

uint64_t plat_counter(void)
{
    uint32_t ms, val;
    do {
        ms = millis;
        val = SYST_CVR;
    } while (ms != millis);
    return (uint64_t)ms * (CPU_HZ / 1000u) + (CPU_HZ / 1000u - 1u - val);
}

const char *plat_counter_name(void) { return "QEMU virtual clock"; }

void plat_reset(uint8_t reason)
{
    PERSIST[0] = PERSIST_MAGIC;
    PERSIST[1] = reason;
    __asm__ volatile("dsb");
    SCB_AIRCR = 0x05FA0004u; /* SYSRESETREQ */
    for (;;) {
    }
}

uint8_t plat_reset_reason(void) { return boot_reason; }

const uint8_t *plat_dataset(uint32_t *len)
{
    if (memcmp(IMAGE, "TFBI", 4) != 0) {
        *len = 0;
        return NULL;
    }
    memcpy(len, IMAGE + 64, 4);
    return IMAGE + 4096;
}

uint8_t *plat_scratch(uint32_t *len)
{
    *len = SCRATCH_BYTES;
    return SCRATCH;
}

const char *plat_board_id(void)
{
    static char id[56];
    if (id[0])
        return id;
    if (memcmp(IMAGE, "TFBI", 4) == 0 && IMAGE[8]) {
        memcpy(id, IMAGE + 8, sizeof id - 1);
    } else {
        memcpy(id, "qemu-0001", 10);
    }
    return id;
}

uint32_t plat_stack_unused(void)
{
    const uint32_t *p = &__stack_limit;
    while (p < &__stack_top && *p == 0xDEADBEEFu)
        p++;
    return (uint32_t)((const uint8_t *)p - (const uint8_t *)&__stack_limit);
}

void plat_ram_figures(ram_figures *r)
{
    r->ram = (uint32_t)((uint8_t *)&__ram_end - (uint8_t *)&__ram_start);
    r->data = (uint32_t)((uint8_t *)&__data_end - (uint8_t *)&__data_start);
    r->bss = (uint32_t)((uint8_t *)&__bss_end - (uint8_t *)&__bss_start);
    r->stack = (uint32_t)((uint8_t *)&__stack_top - (uint8_t *)&__stack_limit);
    r->stack_used = r->stack - plat_stack_unused();
    r->reserved = (uint32_t)((uint8_t *)&__ram_end - (uint8_t *)&__persist_start); /* the reset reason */
}

void plat_init(void)
{
    UART_BAUDDIV = CPU_HZ / 115200u;
    UART_CTRL = 3u; /* TX and RX enabled, polled */
    SYST_RVR = CPU_HZ / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
    flash_file_open();
}

/* -- start-up --------------------------------------------------------------------------------------------------- */
int main(void);

void Reset_Handler(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end)
        *dst++ = *src++;
    for (dst = &__bss_start; dst < &__bss_end;)
        *dst++ = 0;
    /* paint the stack below the current frame for the high-water mark */
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &__stack_limit; p < sp - 16; p++)
        *p = 0xDEADBEEFu;
#if defined(__ARM_FP)
    SCB_CPACR |= 0xFu << 20; /* CP10, CP11: the FPU */
    __asm__ volatile("dsb\n isb");
#endif
    boot_reason = PERSIST[0] == PERSIST_MAGIC ? (uint8_t)PERSIST[1] : 3; /* 3: power-on */
    PERSIST[0] = PERSIST_MAGIC;
    PERSIST[1] = 1; /* a reset nobody asked for next time: the watchdog's */
    main();
    for (;;) {
    }
}

static void Fault_Handler(void)
{
    plat_reset(1); /* a crash reboots the board, as a watchdog would */
}

void Default_Handler(void) { Fault_Handler(); }

__attribute__((section(".vectors"), used)) static void (*const vectors[16 + 32])(void) = {
    (void (*)(void))(&__stack_top),
    Reset_Handler,
    Default_Handler, /* NMI */
    Fault_Handler,   /* HardFault */
    Fault_Handler,   /* MemManage */
    Fault_Handler,   /* BusFault */
    Fault_Handler,   /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVC */
    Default_Handler, /* DebugMon */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
};

int main(void)
{
    plat_init();
    session_main(plat_reset_reason());
}
