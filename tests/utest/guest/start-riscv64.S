// Entry of the RISC-V unit-test guest: loaded at RAM base, a0 = hart id, a1 = DTB (the SBI boot
// convention). Zeroes BSS, takes a stack, calls utest_main(hart id, DTB). With
// UTEST_IMAGE_HEADER it starts with the RISC-V Image header (boot-image-header.rst, version 0.2,
// text_offset 0), for `vmm_riscv64 --test-image`.
    .section .text.start, "ax"
    .global _start
_start:
#ifdef UTEST_IMAGE_HEADER
    .option push
    .option norvc
    j       real_start              // code0
    .word   0                       // code1
    .option pop
    .dword  0                       // text_offset
    .dword  __image_size            // image_size (flat.ld: up to the end of BSS)
    .dword  0                       // flags
    .word   2                       // version 0.2
    .word   0                       // res1
    .dword  0                       // res2
    .ascii  "RISCV\0\0\0"           // magic (deprecated)
    .ascii  "RSC\x05"               // magic2
    .word   0                       // res3
real_start:
#endif
    mv      s0, a0
    mv      s1, a1
    la      sp, boot_stack_top
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sb      zero, 0(t0)
    addi    t0, t0, 1
    j       1b
2:  la      t0, utest_boot_hart
    sd      s0, 0(t0)
    mv      a0, s0
    mv      a1, s1
    call    utest_main
3:  wfi
    j       3b

// SBI HSM hart_start entry of a secondary: a0 = hart id, a1 = opaque = its stack top.
    .global secondary_entry
secondary_entry:
    mv      sp, a1
    call    secondary_main
    j       3b

    .section .bss
    .balign 16
boot_stack:
    .space  16384
boot_stack_top:
