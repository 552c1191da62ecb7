// Entry of the arm64 unit-test guest: loaded at RAM base + 0x80000, x0 = DTB (kvm-unit-tests'
// convention), MMU off. Zeroes BSS, takes a stack, calls utest_main(MPIDR affinity, DTB). With
// UTEST_IMAGE_HEADER it starts with the arm64 Image header (booting.rst: text_offset 0x80000,
// little-endian), for `vmm_arm64 --test-image`.
    .section .text.start, "ax"
    .global _start
_start:
#ifdef UTEST_IMAGE_HEADER
    b       real_start              // code0
    .word   0                       // code1
    .dword  0x80000                 // text_offset
    .dword  __image_size            // image_size (flat.ld: up to the end of BSS)
    .dword  0                       // flags: little-endian, page size unspecified
    .dword  0, 0, 0                 // res2..res4
    .ascii  "ARM\x64"               // magic
    .word   0                       // res5
real_start:
#endif
    mov     x19, x0
    ldr     x1, =boot_stack_top
    mov     sp, x1
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    strb    wzr, [x1], #1
    b       1b
2:  mrs     x0, mpidr_el1
    and     x0, x0, #0xffffff
    mov     x1, x19
    bl      utest_main
3:  wfi
    b       3b

// PSCI CPU_ON entry of a secondary: x0 = context id = its stack top.
    .global secondary_entry
secondary_entry:
    mov     sp, x0
    mrs     x0, mpidr_el1
    and     x0, x0, #0xffffff
    bl      secondary_main
    b       3b
    .ltorg

    .section .bss
    .balign 16
boot_stack:
    .space  16384
boot_stack_top:
