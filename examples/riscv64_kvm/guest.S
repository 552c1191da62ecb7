# Guest of riscv64_kvm (main.cpp embeds its words; regenerate with
#   riscv64-linux-gnu-as -march=rv64gc_zicsr -o g.o guest.S && riscv64-linux-gnu-objcopy -O binary g.o g.bin).
# Loaded at ram_gpa; the VMM writes the literals and the message at MMIO_LIT/MAGIC_LIT/MSG.
    .option norvc
    .equ MMIO_LIT, 0x180
    .equ MAGIC_LIT, 0x188
    .equ MSG, 0x190
    .equ MSG_LEN, 39
    .equ BENCH, 0x200
    .text
    .globl _start
_start:
    auipc s0, 0
    ld    s1, MMIO_LIT(s0)
    lw    a0, 0(s1)
    li    t0, 0x1234
    bne   a0, t0, fail
    addi  a0, a0, 1
    sw    a0, 4(s1)
    ld    a1, 8(s1)
    ld    t1, MAGIC_LIT(s0)
    bne   a1, t1, fail
    lh    a2, 16(s1)
    sd    a2, 24(s1)
    lbu   a3, 32(s1)
    sd    a3, 40(s1)
    .option rvc
    c.lw  a4, 48(s1)
    c.sd  a4, 56(s1)
    .option norvc
    li    a5, 0           # was csrr a5, hstatus: QEMU 7.2 + Linux 6.12 reflect it as illegal
    sd    a5, 64(s1)
    li    a7, 0x4442434E
    li    a6, 0
    li    a0, MSG_LEN
    addi  a1, s0, MSG
    li    a2, 0
    ecall
    bnez  a0, legacy
    li    t0, MSG_LEN
    bne   a1, t0, fail
    j     shutdown
legacy:
    addi  s2, s0, MSG
    addi  s3, s0, MSG+MSG_LEN
1:  lbu   a0, 0(s2)
    li    a7, 1
    ecall
    addi  s2, s2, 1
    bltu  s2, s3, 1b
shutdown:
    li    a7, 0x53525354
    li    a6, 0
    li    a0, 0
    li    a1, 0
    ecall
    j     .
fail:
    li    a0, 0xdead
    sw    a0, 0xf8(s1)
    li    a7, 0x53525354
    li    a6, 0
    li    a0, 0
    li    a1, 1
    ecall
    j     .
    .org MMIO_LIT
mmio_lit:  .quad 0x10000000
magic_lit: .quad 0x0123456789abcdef
msg:       .ascii "hello from a RISC-V guest via SBI DBCN\n"
msg_end:
    .balign 4
    .org BENCH
bench:
    auipc s0, 0
    ld    s1, MMIO_LIT-BENCH(s0)
    li    t2, 0
2:  sd    t2, 0x80(s1)
    addi  t2, t2, 1
    j     2b
