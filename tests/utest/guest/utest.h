/* Freestanding unit-test guest for vmm_arm64 / vmm_riscv64 (tests/utest/README in
 * docs/linux-boot.md, "Unit-test images"). utest.c holds the checks; arch-<arch>.c and
 * start-<arch>.S the few things each architecture does its own way. */
#ifndef UTEST_H
#define UTEST_H

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;

#define MAX_CPUS 8
#define STACK_SIZE 8192

/* arch-<arch>.c */
u64 arch_counter(void);                  /* the architected counter / rdtime */
u64 arch_counter_freq(const void *dtb);  /* CNTFRQ_EL0; RISC-V: 0 (the DTB is the only source) */
const char *arch_counter_name(void);
const char *arch_cpu_id_prop(void);      /* what a cpu node's reg is: "MPIDR" / "hart id" */
s64 arch_firmware_check(void);           /* PSCI/SBI version and probes; prints its own checks */
s64 arch_start_cpu(u64 id, u64 stack_top);
void arch_cpu_stop(void) __attribute__((noreturn));
void arch_system_off(void) __attribute__((noreturn));
void arch_barrier(void);
u64 arch_self_id(void);                  /* MPIDR affinity / hart id of the calling CPU */

/* utest.c */
void put_char(char c);
void put_str(const char *s);
void put_dec(s64 v);
void put_hex(u64 v);
int check(int ok, const char *what);
void secondary_main(u64 id);
void utest_main(u64 boot_id, const void *dtb);

extern u64 utest_boot_hart; /* the boot hart id (RISC-V: from a0) */
#endif
