/* Entry of the Multiboot test guests (one source for i386 and x86-64).
 *
 * The loader enters _start in flat 32-bit protected mode, paging off, interrupts off,
 * EAX = 0x2BADB002 and EBX = the Multiboot information (Multiboot 0.6.96 section 3.2).
 * The i386 guest loads its own GDT and calls guest_main(magic, info). The x86-64 guest
 * also turns on long mode with identity-mapped 2 MiB pages over the first 4 GiB (so the
 * LAPIC, IOAPIC and the pc-testdev window at 0xff000000 are reachable) and calls
 * guest_main from 64-bit code.
 *
 * Application processors: guest_main copies ap_trampoline to physical 0 and wakes the APs
 * with INIT + SIPI vector 0, so they start in real mode at 0000:0000 (QEMU's convention for
 * kvm-unit-tests). The trampoline loads the GDT, enters protected mode and jumps to ap_start32,
 * which takes a stack, enters long mode on x86-64, and calls ap_main(). */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* bit 0: page-aligned modules, bit 1: memory information */
#define CODE32 0x08
#define DATA 0x10
#define CODE64 0x18
#define STACK_BYTES 16384
#define AP_STACK_BYTES 4096
#define MAX_CPUS 32

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    cli
    movl %eax, mb_magic
    movl %ebx, mb_info
    lgdt gdt_descr
    ljmp $CODE32, $1f
1:  movw $DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $stack_top, %esp
#ifdef __x86_64__
    call enter_long_mode
    ljmp $CODE64, $bsp64
    .code64
bsp64:
    movq $stack_top, %rsp
    movl mb_magic, %edi
    movl mb_info, %esi
    call guest_main
    jmp halt64
#else
    pushl mb_info
    pushl mb_magic
    call guest_main
    jmp halt32
#endif

#ifdef __x86_64__
    .code32
/* CR3 = the identity map, CR4.PAE, EFER.LME, then CR0.PG (SDM Vol. 3A 10.8.5). */
enter_long_mode:
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ret
#endif

/* Application processors, after the trampoline: flat segments, own stack. */
    .code32
    .globl ap_start32
ap_start32:
    movw $DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $1, %eax
    lock xaddl %eax, ap_next_stack
    incl %eax
    shll $12, %eax            /* AP_STACK_BYTES */
    addl $ap_stacks, %eax
    movl %eax, %esp
#ifdef __x86_64__
    call enter_long_mode
    ljmp $CODE64, $ap64
    .code64
ap64:
    movl %esp, %esp           /* zero-extends into RSP */
    call ap_main
halt64:
    cli
    hlt
    jmp halt64
#else
    call ap_main
#endif
    .code32
halt32:
    cli
    hlt
    jmp halt32

/* Real-mode trampoline, copied to physical 0 by guest_main. Position-independent in its
 * 16-bit part: it addresses its own GDT descriptor relative to 0 with DS = 0. */
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_descr - ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $CODE32, $ap_start32
    .align 4
tramp_gdt_descr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:
    .code32

    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff /* 0x08: 32-bit code, flat */
    .quad 0x00cf92000000ffff /* 0x10: data, flat */
    .quad 0x00af9a000000ffff /* 0x18: 64-bit code */
gdt_end:
gdt_descr:
    .word gdt_end - gdt - 1
    .long gdt
    .globl mb_magic, mb_info
mb_magic: .long 0
mb_info: .long 0
ap_next_stack: .long 0

#ifdef __x86_64__
/* Identity map of the first 4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories. */
    .section .data.pagetables, "aw"
    .align 4096
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x83 /* present, writable, 2 MiB */
    .set page, page + 1
    .endr
#endif

    .section .bss
    .align 4096
stack:
    .skip STACK_BYTES
stack_top:
    .globl ap_stacks
ap_stacks:
    .skip AP_STACK_BYTES * (MAX_CPUS + 1)

    .section .note.GNU-stack, "", @progbits
