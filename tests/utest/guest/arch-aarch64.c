/* arm64 side of the unit-test guest: PSCI 0.2+ through HVC (SMCCC), the generic timer. */
#include "utest.h"

/* PSCI function ids (Arm DEN 0022, "PSCI function IDs"; SMC32 0x84.., SMC64 0xC4..). */
#define PSCI_VERSION 0x84000000ul
#define PSCI_CPU_OFF 0x84000002ul
#define PSCI_CPU_ON 0xC4000003ul
#define PSCI_AFFINITY_INFO 0xC4000004ul
#define PSCI_SYSTEM_OFF 0x84000008ul

extern void secondary_entry(void);
u64 utest_boot_hart;

static s64 psci(u64 fn, u64 a1, u64 a2, u64 a3) {
    register u64 x0 __asm__("x0") = fn, x1 __asm__("x1") = a1, x2 __asm__("x2") = a2, x3 __asm__("x3") = a3;
    __asm__ volatile("hvc #0"
                     : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
                     :
                     : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17",
                       "memory");
    return (s64)x0;
}

u64 arch_counter(void) {
    u64 v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v)::"memory");
    return v;
}
u64 arch_counter_freq(const void *dtb) {
    (void)dtb;
    u64 v;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(v));
    return v;
}
const char *arch_counter_name(void) { return "CNTVCT_EL0 (CNTFRQ_EL0)"; }
const char *arch_cpu_id_prop(void) { return "reg = MPIDR affinity"; }
u64 arch_self_id(void) {
    u64 v;
    __asm__ volatile("mrs %0, mpidr_el1" : "=r"(v));
    return v & 0xffffff;
}
void arch_barrier(void) { __asm__ volatile("dsb sy" ::: "memory"); }

s64 arch_firmware_check(void) {
    s64 v = psci(PSCI_VERSION, 0, 0, 0);
    put_str("psci: version "); put_dec(v >> 16); put_str("."); put_dec(v & 0xffff); put_str(" (hvc)\n");
    check(v >= 0x2, "psci: PSCI_VERSION through hvc is 0.2 or later");
    check(psci(PSCI_AFFINITY_INFO, arch_self_id(), 0, 0) == 0, "psci: AFFINITY_INFO of the boot CPU is ON (0)");
    return v;
}

s64 arch_start_cpu(u64 id, u64 stack_top) {
    s64 off = psci(PSCI_AFFINITY_INFO, id, 0, 0);
    check(off == 1, "psci: AFFINITY_INFO of a secondary before CPU_ON is OFF (1)");
    return psci(PSCI_CPU_ON, id, (u64)secondary_entry, stack_top);
}
void arch_cpu_stop(void) {
    psci(PSCI_CPU_OFF, 0, 0, 0);
    for (;;) __asm__ volatile("wfi");
}
void arch_system_off(void) {
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
    for (;;) __asm__ volatile("wfi");
}
