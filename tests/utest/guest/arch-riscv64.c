/* RISC-V side of the unit-test guest: SBI (base, HSM, SRST) through ecall, rdtime. */
#include "utest.h"

/* SBI extension and function ids (RISC-V SBI specification v2.0, chapters 4, 9, 10). */
#define SBI_EXT_BASE 0x10
#define SBI_BASE_GET_SPEC_VERSION 0
#define SBI_BASE_PROBE_EXTENSION 3
#define SBI_EXT_HSM 0x48534D
#define SBI_HSM_HART_START 0
#define SBI_HSM_HART_STOP 1
#define SBI_HSM_HART_GET_STATUS 2
#define SBI_EXT_SRST 0x53525354
#define SBI_SRST_SYSTEM_RESET 0
#define SBI_SRST_SHUTDOWN 0

extern void secondary_entry(void);
u64 utest_boot_hart;

struct sbiret { s64 error; s64 value; };
static struct sbiret sbi(u64 ext, u64 fid, u64 a0, u64 a1, u64 a2) {
    register u64 r0 __asm__("a0") = a0, r1 __asm__("a1") = a1, r2 __asm__("a2") = a2;
    register u64 r6 __asm__("a6") = fid, r7 __asm__("a7") = ext;
    __asm__ volatile("ecall" : "+r"(r0), "+r"(r1) : "r"(r2), "r"(r6), "r"(r7) : "memory");
    struct sbiret r = {(s64)r0, (s64)r1};
    return r;
}

u64 arch_counter(void) {
    u64 v;
    __asm__ volatile("rdtime %0" : "=r"(v)::"memory");
    return v;
}
u64 arch_counter_freq(const void *dtb) { (void)dtb; return 0; }
const char *arch_counter_name(void) { return "time (rdtime; frequency from the DTB)"; }
const char *arch_cpu_id_prop(void) { return "reg = hart id"; }
u64 arch_self_id(void) { return utest_boot_hart; }
void arch_barrier(void) { __asm__ volatile("fence rw, rw" ::: "memory"); }

s64 arch_firmware_check(void) {
    struct sbiret v = sbi(SBI_EXT_BASE, SBI_BASE_GET_SPEC_VERSION, 0, 0, 0);
    put_str("sbi: specification "); put_dec(v.value >> 24); put_str("."); put_dec(v.value & 0xffffff);
    put_char('\n');
    check(v.error == 0 && v.value >= 0x2, "sbi: specification version 0.2 or later");
    check(sbi(SBI_EXT_BASE, SBI_BASE_PROBE_EXTENSION, SBI_EXT_HSM, 0, 0).value != 0, "sbi: HSM extension present");
    check(sbi(SBI_EXT_BASE, SBI_BASE_PROBE_EXTENSION, SBI_EXT_SRST, 0, 0).value != 0, "sbi: SRST extension present");
    struct sbiret s = sbi(SBI_EXT_HSM, SBI_HSM_HART_GET_STATUS, utest_boot_hart, 0, 0);
    check(s.error == 0 && s.value == 0, "sbi: HSM status of the boot hart is STARTED (0)");
    return v.value;
}

s64 arch_start_cpu(u64 id, u64 stack_top) {
    struct sbiret s = sbi(SBI_EXT_HSM, SBI_HSM_HART_GET_STATUS, id, 0, 0);
    check(s.error == 0 && s.value == 1, "sbi: HSM status of a secondary before hart_start is STOPPED (1)");
    return sbi(SBI_EXT_HSM, SBI_HSM_HART_START, id, (u64)secondary_entry, stack_top).error;
}
void arch_cpu_stop(void) {
    sbi(SBI_EXT_HSM, SBI_HSM_HART_STOP, 0, 0, 0);
    for (;;) __asm__ volatile("wfi");
}
void arch_system_off(void) {
    sbi(SBI_EXT_SRST, SBI_SRST_SYSTEM_RESET, SBI_SRST_SHUTDOWN, 0, 0);
    for (;;) __asm__ volatile("wfi");
}
