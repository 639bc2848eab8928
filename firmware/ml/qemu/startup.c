/*
 * startup.c - just enough of a Cortex-M boot to run the ML harness on QEMU's
 * mps2-an385 (Cortex-M3) and mps2-an386 (Cortex-M4) under semihosting:
 * a vector table, the FPU switched on for the M4 build, then newlib's rdimon
 * crt0 (_start: zeroes .bss, reads argv over semihosting, calls main, exits
 * through semihosting). A fault stops QEMU with an error instead of hanging.
 * This is a measuring stand, not the firmware's startup (the platform's).
 */
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;

void Reset_Handler(void);
void Fault_Handler(void);

void Reset_Handler(void) {
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20); /* CPACR: CP10, CP11 full access */
    __asm volatile("dsb\n\tisb");
#endif
    _start();
    for (;;) {
    }
}

void Fault_Handler(void) {
    /* SYS_EXIT (0x18) with ADP_Stopped_RunTimeErrorUnknown (0x20023): QEMU exits with status 1. */
    register uint32_t op __asm("r0") = 0x18u;
    register uint32_t arg __asm("r1") = 0x20023u;
    __asm volatile("bkpt 0xab" : : "r"(op), "r"(arg) : "memory");
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&__stack_top, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,
};
