/* A Multiboot test guest that checks, one by one, the conventions the kvm-unit-tests x86
 * guests rely on in QEMU's PC machine, and reports through them:
 *
 *   multiboot   EAX magic, info flags, mem_lower/mem_upper, the memory map
 *   argv        the command line's first word is the image's name, arguments follow
 *   environ     module 0 is a text file of KEY=VALUE lines
 *   fw_cfg      signature "QEMU" at key 0, CPU count (key 5), RAM size (key 3)
 *   acpi        RSDP in 0xE0000..0xFFFFF, RSDT -> FACP (PM timer port) and APIC (CPUs)
 *   pmtimer     the ACPI PM timer advances, is 24 bits wide, and ticks at a steady rate
 *               (two 20 ms windows measured against the TSC agree within 10 %)
 *   smp         every AP is woken with INIT + SIPI (trampoline at physical 0) and checks in
 *               with its own APIC id
 *   testdev     pc-testdev scratch register (1/2/4-byte and string I/O) and MMIO window
 *   unknown     an unused port reads all ones; PCI config space reads all ones
 *
 * Output goes to the 16550 at 0x3f8; the verdict to isa-debug-exit (port 0xf4): the number of
 * failed checks, so 0 means pass and the VMM exits with status 1. Arguments: "cpus=N" (the
 * CPU count to expect), "fail" (add a check that fails, to test the failure path).
 *
 * Freestanding: no libc, no SSE, built for i386 and for x86-64 long mode from this one file. */

#include <stdint.h>

typedef unsigned long uptr;

/* ---- port I/O, CPU --------------------------------------------------------------------- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void pause(void) { __asm__ volatile("pause"); }
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void cpuid(uint32_t leaf, uint32_t* a, uint32_t* b, uint32_t* c, uint32_t* d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline uint32_t mmio_read32(uptr a) { return *(volatile uint32_t*)a; }
static inline void mmio_write32(uptr a, uint32_t v) { *(volatile uint32_t*)a = v; }

/* The compiler may call these even when freestanding. */
void* memset(void* d, int c, unsigned long n) {
    unsigned char* p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void* memcpy(void* d, const void* s, unsigned long n) {
    unsigned char* p = d;
    const unsigned char* q = s;
    while (n--) *p++ = *q++;
    return d;
}

/* ---- serial ---------------------------------------------------------------------------- */
#define COM1 0x3f8
#define LSR_THRE 0x20

static volatile int print_lock;
static void lock(volatile int* l) { while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) pause(); }
static void unlock(volatile int* l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

static void putc_(char c) {
    while (!(inb(COM1 + 5) & LSR_THRE)) pause();
    outb(COM1, (uint8_t)c);
}
static void puts_(const char* s) { while (*s) putc_(*s++); }
static void put_dec(uint32_t v) {
    char b[12];
    int i = 0;
    do b[i++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    while (i) putc_(b[--i]);
}
static void put_hex(uint64_t v) {
    puts_("0x");
    int started = 0;
    for (int s = 60; s >= 0; s -= 4) {
        unsigned d = (unsigned)(v >> s) & 0xf;
        if (d || started || s == 0) {
            putc_("0123456789abcdef"[d]);
            started = 1;
        }
    }
}

/* ---- strings --------------------------------------------------------------------------- */
static int streq(const char* a, const char* b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
}
static int starts_with(const char* s, const char* p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
static int contains(const char* s, const char* p) {
    for (; *s; ++s) if (starts_with(s, p)) return 1;
    return 0;
}
static uint32_t parse_u32(const char* s) {
    uint32_t v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (uint32_t)(*s++ - '0');
    return v;
}

/* The port the guest writes once, at a known point, for a VMM to snapshot at (undecoded). */
#define SNAPSHOT_MARKER_PORT 0x5fe

/* ---- checks ---------------------------------------------------------------------------- */
static unsigned checks, failures;
static void check(int ok, const char* what) {
    ++checks;
    if (!ok) ++failures;
    puts_(ok ? "PASS: " : "FAIL: ");
    puts_(what);
    putc_('\n');
}
static void note(const char* what, uint64_t v) {
    puts_("  ");
    puts_(what);
    puts_(" = ");
    put_hex(v);
    putc_('\n');
}

/* ---- Multiboot (0.6.96 section 3.3) ---------------------------------------------------- */
struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
};
struct mb_module { uint32_t start, end, string, reserved; };
#define MB_INFO_MEM (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MODS (1u << 3)
#define MB_INFO_MMAP (1u << 6)

extern char __image_end[];

/* argv: a copy of the command line split at spaces. */
#define MAX_ARGS 16
static char argbuf[1024];
static char* argv[MAX_ARGS];
static int argc;

static void split_args(const char* cmdline) {
    unsigned n = 0;
    while (cmdline[n] && n + 1 < sizeof argbuf) argbuf[n] = cmdline[n], ++n;
    argbuf[n] = 0;
    char* p = argbuf;
    while (*p && argc < MAX_ARGS) {
        while (*p == ' ') *p++ = 0;
        if (!*p) break;
        argv[argc++] = p;
        while (*p && *p != ' ') ++p;
    }
}

/* environ: module 0, lines of KEY=VALUE. */
static const char* env_start;
static uint32_t env_len;
static int getenv_eq(const char* key, const char* want) {
    const char* p = env_start;
    const char* end = env_start + env_len;
    while (p && p < end) {
        const char* k = key;
        const char* q = p;
        while (*k && q < end && *q == *k) ++q, ++k;
        if (!*k && q < end && *q == '=') {
            ++q;
            const char* w = want;
            while (*w && q < end && *q == *w) ++q, ++w;
            return !*w && (q == end || *q == '\n');
        }
        while (p < end && *p != '\n') ++p;
        ++p;
    }
    return 0;
}

/* ---- fw_cfg (QEMU docs/specs/fw_cfg.rst) ----------------------------------------------- */
#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
static uint64_t fw_cfg(uint16_t key, int bytes) {
    uint64_t v = 0;
    outw(FW_CFG_SEL, key);
    for (int i = 0; i < bytes; ++i) v |= (uint64_t)inb(FW_CFG_DATA) << (8 * i);
    return v;
}

/* ---- ACPI (ACPI 6.5 5.2.5 - 5.2.12) ---------------------------------------------------- */
static int sum_ok(const uint8_t* p, uint32_t n) {
    uint8_t s = 0;
    while (n--) s = (uint8_t)(s + *p++);
    return s == 0;
}
static const uint8_t* find_rsdp(void) {
    for (uptr a = 0xe0000; a < 0x100000; a += 16) {
        const uint8_t* p = (const uint8_t*)a;
        if (starts_with((const char*)p, "RSD PTR ") && sum_ok(p, 20)) return p;
    }
    return 0;
}
static uint32_t rd32(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static const uint8_t* find_table(const uint8_t* rsdp, const char* sig) {
    const uint8_t* rsdt = (const uint8_t*)(uptr)rd32(rsdp + 16);
    if (!starts_with((const char*)rsdt, "RSDT") || !sum_ok(rsdt, rd32(rsdt + 4))) return 0;
    for (uint32_t off = 36; off + 4 <= rd32(rsdt + 4); off += 4) {
        const uint8_t* t = (const uint8_t*)(uptr)rd32(rsdt + off);
        if (starts_with((const char*)t, sig) && sum_ok(t, rd32(t + 4))) return t;
    }
    return 0;
}

/* ---- PM timer -------------------------------------------------------------------------- */
static uint16_t pm_port;
static uint32_t pm_read(void) { return inl(pm_port) & 0xffffff; }
/* Ticks elapsed from `from` to `to` on the 24-bit counter. */
static uint32_t pm_delta(uint32_t from, uint32_t to) { return (to - from) & 0xffffff; }
/* Busy-waits `ticks` PM-timer ticks (< 2^23), or gives up after `spins` reads. */
static int pm_wait(uint32_t ticks, uint32_t spins) {
    const uint32_t t0 = pm_read();
    while (spins--) if (pm_delta(t0, pm_read()) >= ticks) return 1;
    return 0;
}
#define PM_HZ 3579545u
/* One reading of the PM timer with the TSC around it, from the tightest of five tries. */
struct pm_sample { uint32_t pm; uint64_t tsc; };
static void pm_sample(struct pm_sample* out) {
    uint64_t best = ~(uint64_t)0;
    for (int i = 0; i < 5; ++i) {
        const uint64_t t0 = rdtsc();
        const uint32_t p = pm_read();
        const uint64_t t1 = rdtsc();
        if (t1 - t0 < best) {
            best = t1 - t0;
            out->pm = p;
            out->tsc = t0 + (t1 - t0) / 2;
        }
    }
}

/* ---- local APIC (SDM Vol. 3A 11.4, 11.6) ----------------------------------------------- */
#define APIC_BASE 0xfee00000u
#define APIC_SVR 0xf0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define ICR_INIT 0x00000500u
#define ICR_STARTUP 0x00000600u
#define ICR_ASSERT 0x00004000u
#define ICR_ALL_BUT_SELF 0x000c0000u
#define ICR_BUSY 0x00001000u
static uint32_t apic_id(void) {
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    return b >> 24;
}
static void icr(uint32_t lo) {
    mmio_write32(APIC_BASE + APIC_ICR_HI, 0);
    mmio_write32(APIC_BASE + APIC_ICR_LO, lo);
    for (int i = 0; i < 1000000 && (mmio_read32(APIC_BASE + APIC_ICR_LO) & ICR_BUSY); ++i) pause();
}

#define MAX_CPUS 32
static volatile uint32_t ap_count;
static volatile uint8_t ap_seen[256];

void ap_main(void) {
    const uint32_t id = apic_id();
    __atomic_fetch_add(&ap_seen[id & 0xff], 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&ap_count, 1, __ATOMIC_SEQ_CST);
    lock(&print_lock);
    puts_("  AP with APIC id ");
    put_dec(id);
    puts_(" is up\n");
    unlock(&print_lock);
}

extern char ap_trampoline[], ap_trampoline_end[];

/* ---- the checks ------------------------------------------------------------------------ */
static void check_multiboot(uint32_t magic, const struct mb_info* mbi, uint64_t* ram_from_map) {
    check(magic == 0x2badb002, "multiboot: EAX = 0x2BADB002 at entry");
    check((mbi->flags & (MB_INFO_MEM | MB_INFO_CMDLINE | MB_INFO_MMAP)) == (MB_INFO_MEM | MB_INFO_CMDLINE | MB_INFO_MMAP),
          "multiboot: info flags give memory, cmdline and memory map");
    check(mbi->mem_lower == 639, "multiboot: mem_lower is 639 KiB");
    uint64_t ram = 0;
    int image_in_ram = 0;
    const uptr image = 0x400000, image_end = (uptr)__image_end;
    for (uint32_t off = 0; off + 24 <= mbi->mmap_length;) {
        const uint8_t* e = (const uint8_t*)(uptr)(mbi->mmap_addr + off);
        const uint32_t size = rd32(e);
        const uint64_t base = rd32(e + 4) | (uint64_t)rd32(e + 8) << 32;
        const uint64_t len = rd32(e + 12) | (uint64_t)rd32(e + 16) << 32;
        if (rd32(e + 20) == 1) {
            ram += len;
            if (base <= image && image_end <= base + len) image_in_ram = 1;
        }
        off += size + 4;
    }
    check(image_in_ram, "multiboot: the memory map lists the image as available RAM");
    *ram_from_map = ram;
}

static void check_args(const struct mb_info* mbi, uint32_t* want_cpus, int* want_fail) {
    split_args((const char*)(uptr)mbi->cmdline);
    check(argc >= 1 && contains(argv[0], "multiboot-guest"), "argv: argv[0] is the image's name");
    if (argc >= 1) {
        puts_("  argv[0] = ");
        puts_(argv[0]);
        putc_('\n');
    }
    for (int i = 1; i < argc; ++i) {
        if (starts_with(argv[i], "cpus=")) *want_cpus = parse_u32(argv[i] + 5);
        if (streq(argv[i], "fail")) *want_fail = 1;
    }
    check(argc >= 2 && starts_with(argv[1], "cpus="), "argv: argv[1] is the first argument (cpus=N)");
}

static void check_env(const struct mb_info* mbi) {
    const int have = (mbi->flags & MB_INFO_MODS) && mbi->mods_count >= 1;
    check(have, "environ: module 0 is present");
    if (!have) return;
    const struct mb_module* m = (const struct mb_module*)(uptr)mbi->mods_addr;
    env_start = (const char*)(uptr)m->start;
    env_len = m->end - m->start;
    check((m->start & 0xfff) == 0, "environ: module 0 is page aligned (header flag 0)");
    check(getenv_eq("VCPU_MULTIBOOT_ENV", "1"), "environ: VCPU_MULTIBOOT_ENV=1");
    check(getenv_eq("GREETING", "hello from module 0"), "environ: GREETING=hello from module 0");
    check(!getenv_eq("GREETING", "hello"), "environ: a prefix of a value does not match");
}

static uint32_t check_fw_cfg(const struct mb_info* mbi, uint64_t ram_from_map, uint32_t want_cpus) {
    check(fw_cfg(0x00, 4) == 0x554d4551, "fw_cfg: signature \"QEMU\" at key 0");
    const uint32_t cpus = (uint32_t)fw_cfg(0x05, 2);
    const uint64_t ram = fw_cfg(0x03, 8);
    note("fw_cfg CPUs", cpus);
    note("fw_cfg RAM", ram);
    check(cpus >= 1 && cpus <= MAX_CPUS && (want_cpus == 0 || cpus == want_cpus), "fw_cfg: CPU count (key 5) as expected");
    check(ram == ((uint64_t)mbi->mem_upper << 10) + 0x100000, "fw_cfg: RAM size (key 3) = 1 MiB + mem_upper");
    check(ram_from_map == ram - 0x60400, "multiboot: memory map RAM = RAM minus the 639 KiB..1 MiB hole");
    return cpus;
}

static void check_acpi(uint32_t cpus) {
    const uint8_t* rsdp = find_rsdp();
    check(rsdp != 0, "acpi: RSDP found in 0xE0000..0xFFFFF with a good checksum");
    if (!rsdp) return;
    check(rsdp[15] < 2 || sum_ok(rsdp, 36), "acpi: RSDP extended checksum");
    const uint8_t* fadt = find_table(rsdp, "FACP");
    check(fadt != 0, "acpi: RSDT lists a FACP with a good checksum");
    if (fadt) {
        pm_port = (uint16_t)rd32(fadt + 76);
        note("PM_TMR_BLK", pm_port);
        check(pm_port != 0 && fadt[91] == 4, "acpi: FADT names a 4-byte PM timer block");
    }
    const uint8_t* madt = find_table(rsdp, "APIC");
    check(madt != 0, "acpi: RSDT lists an APIC (MADT) table");
    if (madt) {
        uint32_t lapics = 0, ioapics = 0;
        for (uint32_t off = 44; off + 2 <= rd32(madt + 4) && madt[off + 1] != 0; off += madt[off + 1]) {
            if (madt[off] == 0 && (rd32(madt + off + 4) & 1)) ++lapics;
            if (madt[off] == 1) ++ioapics;
        }
        check(lapics == cpus && ioapics == 1, "acpi: MADT lists every CPU and one I/O APIC");
    }
}

static void check_pm_timer(void) {
    if (!pm_port) {
        check(0, "pmtimer: no port");
        return;
    }
    const uint32_t a = pm_read();
    int advanced = 0;
    for (int i = 0; i < 1000000 && !advanced; ++i) advanced = pm_read() != a;
    check(advanced, "pmtimer: the counter advances");
    check((inl(pm_port) >> 24) == 0, "pmtimer: 24 bits wide (TMR_VAL_EXT clear)");
    /* Two windows of 20 ms of PM time, each measured against the TSC with tightly bracketed
     * end points (a vCPU preempted between its reads of the two clocks would skew one window,
     * so each end point is the best of five tries). The two rates must agree within 10 %,
     * which holds only if the timer ticks at a steady rate. */
    struct pm_sample s0, s1, s2;
    pm_sample(&s0);
    const int w1 = pm_wait(PM_HZ / 50, 100000000);
    pm_sample(&s1);
    const int w2 = pm_wait(PM_HZ / 50, 100000000);
    pm_sample(&s2);
    check(w1 && w2, "pmtimer: 20 ms of PM-timer ticks elapse");
    const uint64_t p1 = pm_delta(s0.pm, s1.pm), p2 = pm_delta(s1.pm, s2.pm);
    const uint64_t t1 = s1.tsc - s0.tsc, t2 = s2.tsc - s1.tsc;
    note("window 1: PM ticks", p1);
    note("window 1: TSC cycles", t1);
    note("window 2: PM ticks", p2);
    note("window 2: TSC cycles", t2);
    /* rate1 = p1 / t1, rate2 = p2 / t2; compare p1 * t2 with p2 * t1. */
    const uint64_t x1 = p1 * t2, x2 = p2 * t1;
    check(p1 > 0 && p2 > 0 && x1 * 10 < x2 * 11 && x2 * 10 < x1 * 11, "pmtimer: steady rate against the TSC");
}

static void check_smp(uint32_t cpus) {
    if (cpus <= 1) {
        check(ap_count == 0, "smp: one CPU, no AP to start");
        return;
    }
    /* The trampoline goes to physical 0: SIPI vector 0 starts the APs at 0000:0000. */
    uptr zero = 0;
    __asm__("" : "+r"(zero)); /* physical 0 is a real address here, not a null pointer */
    memcpy((void*)zero, ap_trampoline, (unsigned long)(ap_trampoline_end - ap_trampoline));
    mmio_write32(APIC_BASE + APIC_SVR, 0x1ff); /* software-enable the local APIC */
    icr(ICR_ASSERT | ICR_ALL_BUT_SELF | ICR_INIT);
    icr(ICR_ASSERT | ICR_ALL_BUT_SELF | ICR_STARTUP | 0x00);
    /* Up to 10 s of PM time for the APs to check in. */
    for (uint32_t i = 0; i < 1000 && ap_count < cpus - 1; ++i) pm_wait(PM_HZ / 100, 10000000);
    lock(&print_lock);
    note("APs started", ap_count);
    unlock(&print_lock);
    check(ap_count == cpus - 1, "smp: every AP started with INIT + SIPI");
    int distinct = 1;
    for (uint32_t id = 0; id < 256; ++id)
        if (ap_seen[id] > 1 || (id == apic_id() && ap_seen[id])) distinct = 0;
    check(distinct, "smp: each AP has its own APIC id");
}

static void check_testdev(void) {
    outl(0xe0, 0x12345678);
    check(inl(0xe0) == 0x12345678 && inb(0xe0) == 0x78 && inw(0xe2) == 0x1234 && inb(0xe3) == 0x12,
          "testdev: scratch register at 0xe0 (4/2/1-byte reads)");
    outb(0xe1, 0xab);
    outw(0xe2, 0xcdef);
    check(inl(0xe0) == 0xcdefab78, "testdev: 1- and 2-byte writes replace their bytes");
    /* String I/O: rep outsb of four bytes to port 0xe0 leaves the last one in byte 0. */
    static const uint8_t out[4] = {1, 2, 3, 4};
    uint8_t in[4] = {0, 0, 0, 0};
    const void* src = out;
    void* dst = in;
    unsigned long n = 4;
    __asm__ volatile("rep outsb" : "+S"(src), "+c"(n) : "d"((uint16_t)0xe0) : "memory");
    n = 4;
    __asm__ volatile("rep insb" : "+D"(dst), "+c"(n) : "d"((uint16_t)0xe0) : "memory");
    check(in[0] == 4 && in[3] == 4 && inl(0xe0) == 0xcdefab04, "testdev: rep outsb / rep insb through port 0xe0");
    volatile uint32_t* w = (volatile uint32_t*)0xff000000u;
    w[0] = 0xdeadbeef;
    w[0x3fff] = 0x0badf00d;
    check(w[0] == 0xdeadbeef && w[0x3fff] == 0x0badf00d && ((volatile uint8_t*)w)[1] == 0xbe,
          "testdev: RAM-like MMIO window at 0xff000000");
}

static void check_unknown_ports(void) {
    check(inb(0x80 + 0x7f) == 0xff && inl(0x3000) == 0xffffffffu, "unknown ports read all ones");
    outl(0xcf8, 0x80000000u);
    check(inl(0xcfc) == 0xffffffffu, "pci: config space of an absent device reads all ones");
}

/* ---- exit-cost measurement ("bench" argument) -------------------------------------------
 * Cycles per operation, read from the TSC around a loop of N operations: CPUID (an exit
 * handled inside KVM), a read of the PM timer port 0xb008 (an exit to the VMM) and, in long
 * mode, a write of CR8 (the TPR; with the in-kernel LAPIC KVM handles it or the CPU does not
 * exit at all). Prints "BENCH <name> <cycles per op>" lines. The port is fixed, not taken from
 * the FADT, so a VMM without ACPI tables (benchmarks/multiboot_exits.cpp's raw loop) can run it. */
#ifdef __x86_64__
static void bench_line(const char* name, uint64_t cycles, uint32_t n) {
    puts_("BENCH ");
    puts_(name);
    putc_(' ');
    put_dec((uint32_t)(cycles / n));
    putc_('\n');
}
static void run_bench(void) {
    enum { n_cpuid = 20000, n_pio = 5000, n_cr8 = 20000 };
    uint32_t a, b, c, d;
    uint64_t t0 = rdtsc();
    for (int i = 0; i < n_cpuid; ++i) cpuid(0, &a, &b, &c, &d);
    bench_line("cpuid", rdtsc() - t0, n_cpuid);
    t0 = rdtsc();
    for (int i = 0; i < n_pio; ++i) (void)inl(0xb008);
    bench_line("pmtimer_read", rdtsc() - t0, n_pio);
    t0 = rdtsc();
    for (int i = 0; i < n_cr8; ++i) __asm__ volatile("mov %0, %%cr8" ::"r"((uint64_t)(i & 1)));
    bench_line("mov_cr8", rdtsc() - t0, n_cr8);
}
#endif

void guest_main(uint32_t magic, uint32_t info) {
    const struct mb_info* mbi = (const struct mb_info*)(uptr)info;
#ifdef __x86_64__
    if (mbi->flags & MB_INFO_CMDLINE) {
        split_args((const char*)(uptr)mbi->cmdline);
        if (argc >= 2 && streq(argv[1], "bench")) {
            run_bench();
            outl(0xf4, 0);
            return;
        }
        argc = 0;
    }
#endif
#ifdef __x86_64__
    puts_("multiboot guest (x86-64 long mode)\n");
#else
    puts_("multiboot guest (i386 protected mode)\n");
#endif
    uint64_t ram_from_map = 0;
    uint32_t want_cpus = 0;
    int want_fail = 0;
    check_multiboot(magic, mbi, &ram_from_map);
    check_args(mbi, &want_cpus, &want_fail);
    check_env(mbi);
    const uint32_t cpus = check_fw_cfg(mbi, ram_from_map, want_cpus);
    check_acpi(cpus);
    /* A marker a VMM can snapshot at (vmm --snapshot-on port=0x5fe): a write to a port nothing
     * decodes, made once, before the PM-timer windows and the SMP bring-up. */
    outb(SNAPSHOT_MARKER_PORT, 1);
    check_pm_timer();
    check_testdev();
    check_unknown_ports();
    check_smp(cpus);
    if (want_fail) check(0, "a failure asked for on the command line");
    lock(&print_lock);
    puts_("SUMMARY: ");
    put_dec(checks);
    puts_(" checks, ");
    put_dec(failures);
    puts_(" failures\n");
    unlock(&print_lock);
    outl(0xf4, failures); /* isa-debug-exit: the VMM exits with (failures << 1) | 1 */
}
