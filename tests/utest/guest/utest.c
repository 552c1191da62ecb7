/* The checks of the unit-test guest (see utest.h). Each prints PASS:/FAIL:; at the end the guest
 * prints "EXIT: STATUS=<(failures << 1) | 1>" and powers off (PSCI SYSTEM_OFF / SBI SRST), as
 * kvm-unit-tests' exit() does. Built with UTEST_DELIBERATE_FAIL it adds one failing check. */
#include "utest.h"

#ifndef UTEST_NAME
#define UTEST_NAME "utest"
#endif

/* ---- memory helpers the compiler may call ------------------------------------------------ */
void *memset(void *d, int c, unsigned long n) {
    volatile u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
    volatile u8 *p = d;
    const volatile u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

static unsigned long str_len(const char *s) { unsigned long n = 0; while (s[n]) ++n; return n; }
static int str_eq(const char *a, const char *b) { while (*a && *a == *b) { ++a; ++b; } return *a == *b; }
static int str_eqn(const char *a, const char *b, unsigned long n) {
    for (unsigned long i = 0; i < n; ++i) { if (a[i] != b[i]) return 0; if (!a[i]) return 1; }
    return 1;
}

/* ---- UART: a 16550 found through /chosen/stdout-path ------------------------------------- */
static volatile u8 *uart;
void put_char(char c) {
    if (!uart) return;
    if (c == '\n') put_char('\r');
    for (unsigned long i = 0; i < 1000000 && !(uart[5] & 0x20); ++i) {} /* LSR.THRE */
    uart[0] = (u8)c;
}
void put_str(const char *s) { while (*s) put_char(*s++); }
void put_dec(s64 v) {
    char b[24]; int i = 0; u64 u = v < 0 ? (u64)(-v) : (u64)v;
    if (v < 0) put_char('-');
    do { b[i++] = (char)('0' + u % 10); u /= 10; } while (u);
    while (i) put_char(b[--i]);
}
void put_hex(u64 v) {
    put_str("0x");
    int started = 0;
    for (int s = 60; s >= 0; s -= 4) {
        unsigned d = (unsigned)(v >> s) & 15;
        if (d || started || s == 0) { put_char("0123456789abcdef"[d]); started = 1; }
    }
}

static int failures;
int check(int ok, const char *what) {
    put_str(ok ? "PASS: " : "FAIL: ");
    put_str(what);
    put_char('\n');
    if (!ok) ++failures;
    return ok;
}

/* ---- a minimal flattened-device-tree reader (devicetree specification v0.4, chapter 5) ---- */
#define FDT_MAGIC 0xd00dfeedu
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9
static const u8 *fdt;
static u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static u64 be64(const u8 *p) { return (u64)be32(p) << 32 | be32(p + 4); }
static u32 hdr(unsigned i) { return be32(fdt + 4 * i); }
static const u8 *fdt_struct(void) { return fdt + hdr(2); }
static const char *fdt_string(u32 off) { return (const char *)(fdt + hdr(3) + off); }

/* Walks the structure block; for each property calls f(path depth names, name, value, len). */
typedef int (*prop_fn)(const char *const *names, int depth, const char *prop, const u8 *val, u32 len, void *ctx);
static void fdt_walk(prop_fn f, void *ctx) {
    const char *names[16];
    int depth = 0;
    const u8 *p = fdt_struct(), *end = p + hdr(9);
    while (p < end) {
        u32 tok = be32(p);
        p += 4;
        if (tok == FDT_BEGIN_NODE) {
            const char *n = (const char *)p;
            if (depth < 16) names[depth] = n;
            ++depth;
            p += (str_len(n) + 1 + 3) & ~3ul;
        } else if (tok == FDT_END_NODE) {
            if (--depth < 0) return;
        } else if (tok == FDT_PROP) {
            u32 len = be32(p), nameoff = be32(p + 4);
            const u8 *val = p + 8;
            if (depth <= 16 && f(names, depth, fdt_string(nameoff), val, len, ctx)) return;
            p = val + ((len + 3) & ~3u);
        } else if (tok == FDT_NOP) {
        } else {
            return;
        }
    }
}

/* Does the node at names[0..depth) have path `path` ("/a/b"; unit addresses must match too)? */
static int path_is(const char *const *names, int depth, const char *path) {
    if (depth == 1) return str_eq(path, "/");
    for (int i = 1; i < depth; ++i) {
        if (*path != '/') return 0;
        ++path;
        unsigned long n = str_len(names[i]);
        if (!str_eqn(path, names[i], n)) return 0;
        path += n;
    }
    return *path == 0;
}

struct find { const char *path, *prop; const u8 *val; u32 len; };
static int find_fn(const char *const *names, int depth, const char *prop, const u8 *val, u32 len, void *c) {
    struct find *f = c;
    if (!str_eq(prop, f->prop) || !path_is(names, depth, f->path)) return 0;
    f->val = val;
    f->len = len;
    return 1;
}
static const u8 *fdt_prop(const char *path, const char *prop, u32 *len) {
    struct find f = {path, prop, 0, 0};
    fdt_walk(find_fn, &f);
    if (len) *len = f.len;
    return f.val;
}
static u64 cells(const u8 *v, u32 len) { return len == 8 ? be64(v) : len == 4 ? be32(v) : 0; }

/* CPUs: nodes /cpus/cpu@* with device_type "cpu"; their reg (one cell) is the CPU id. */
static u64 cpu_ids[MAX_CPUS];
static int ncpus;
static int cpus_fn(const char *const *names, int depth, const char *prop, const u8 *val, u32 len, void *c) {
    (void)c;
    if (depth == 3 && str_eq(names[1], "cpus") && str_eqn(names[2], "cpu@", 4) && str_eq(prop, "reg") &&
        ncpus < MAX_CPUS)
        cpu_ids[ncpus++] = cells(val, len);
    return 0;
}

/* ---- secondaries ---------------------------------------------------------------------------- */
static u8 stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(16)));
static volatile u64 seen_id[MAX_CPUS], seen_counter[MAX_CPUS], seen_flag[MAX_CPUS];
static volatile int current_slot;

void secondary_main(u64 id) {
    int slot = current_slot;
    seen_id[slot] = id;
    seen_counter[slot] = arch_counter();
    arch_barrier();
    seen_flag[slot] = 1;
    arch_barrier();
    arch_cpu_stop();
}

/* ---- the test ------------------------------------------------------------------------------- */
static const char *argv[32];
static int argc;
static char args_buf[1024];

static const char *arg_value(const char *key) { /* "key=value" in argv */
    unsigned long n = str_len(key);
    for (int i = 1; i < argc; ++i)
        if (str_eqn(argv[i], key, n) && argv[i][n] == '=') return argv[i] + n + 1;
    return 0;
}
static int arg_present(const char *a) {
    for (int i = 1; i < argc; ++i) if (str_eq(argv[i], a)) return 1;
    return 0;
}
static s64 parse_dec(const char *s) {
    s64 v = 0;
    if (!s || !*s) return -1;
    for (; *s; ++s) { if (*s < '0' || *s > '9') return -1; v = v * 10 + (*s - '0'); }
    return v;
}

static void find_uart(void) {
    u32 len = 0;
    const u8 *sp = fdt_prop("/chosen", "stdout-path", &len);
    if (!sp || len < 2 || len > 100) return;
    char path[100];
    u32 i = 0;
    for (; i < len && sp[i] && sp[i] != ':'; ++i) path[i] = (char)sp[i];
    path[i] = 0;
    const u8 *compat = fdt_prop(path, "compatible", &len);
    if (!compat || !str_eqn((const char *)compat, "ns16550", 7)) return;
    const u8 *reg = fdt_prop(path, "reg", &len);
    if (!reg || len < 8) return;
    uart = (volatile u8 *)(len >= 16 ? be64(reg) : be32(reg)); /* #address-cells 2 (or 1) */
}

void utest_main(u64 boot_id, const void *dtb) {
    fdt = dtb;
    int fdt_ok = ((u64)dtb & 7) == 0 && be32(fdt) == FDT_MAGIC;
    if (fdt_ok) find_uart();
    put_str("\n" UTEST_NAME ": unit-test guest, boot CPU ");
    put_hex(boot_id);
    put_str(", DTB at ");
    put_hex((u64)dtb);
    put_char('\n');
    check(fdt_ok, "dtb: boot register points at a flattened device tree (magic 0xd00dfeed, 8-byte aligned)");
    if (!fdt_ok) goto out; /* nothing more can be read (and nothing printed without a UART) */
    check(uart != 0, "dtb: /chosen/stdout-path names an ns16550 with a reg (this console)");
    put_str("dtb: version "); put_dec(hdr(5)); put_str(", size "); put_dec(hdr(1)); put_char('\n');

    /* argv: argv[0] is the image's name, the rest is /chosen/bootargs split at spaces. */
    u32 len = 0;
    const u8 *ba = fdt_prop("/chosen", "bootargs", &len);
    check(ba != 0 && len >= 1 && ba[len - 1] == 0, "argv: /chosen/bootargs is a string");
    argv[argc++] = UTEST_NAME;
    if (ba && len < sizeof args_buf) {
        for (u32 i = 0; i < len; ++i) args_buf[i] = (char)ba[i];
        char *p = args_buf;
        while (*p && argc < 32) {
            while (*p == ' ') *p++ = 0;
            if (!*p) break;
            argv[argc++] = p;
            while (*p && *p != ' ') ++p;
        }
    }
    for (int i = 0; i < argc; ++i) {
        put_str("argv["); put_dec(i); put_str("] = \""); put_str(argv[i]); put_str("\"\n");
    }
    check(argc >= 3, "argv: at least two arguments after the image name");
    check(arg_present("hello"), "argv: the word 'hello' is an argument");

    /* environ: the initrd range from /chosen, KEY=VALUE lines. */
    u32 l1 = 0, l2 = 0;
    const u8 *is = fdt_prop("/chosen", "linux,initrd-start", &l1), *ie = fdt_prop("/chosen", "linux,initrd-end", &l2);
    int have_env = check(is && ie, "environ: /chosen has linux,initrd-start and linux,initrd-end");
    int env_vars = 0, answer = 0, testname = 0;
    if (have_env) {
        const char *e = (const char *)cells(is, l1), *end = (const char *)cells(ie, l2);
        check(end > e && end - e < (1 << 20), "environ: a non-empty initrd below 1 MiB");
        put_str("environ: "); put_hex((u64)e); put_str(".."); put_hex((u64)end); put_char('\n');
        while (e < end && end - e < (1 << 20)) {
            const char *line = e;
            while (e < end && *e != '\n') ++e;
            unsigned long n = (unsigned long)(e - line);
            if (e < end) ++e;
            if (n == 0) continue;
            put_str("environ: ");
            for (unsigned long i = 0; i < n; ++i) put_char(line[i]);
            put_char('\n');
            ++env_vars;
            if (n == 9 && str_eqn(line, "ANSWER=42", 9)) answer = 1;
            if (n > 9 && str_eqn(line, "TESTNAME=", 9)) testname = 1;
        }
    }
    check(env_vars >= 2, "environ: at least two KEY=VALUE lines");
    check(answer, "environ: ANSWER=42");
    check(testname, "environ: TESTNAME is set");

    /* Memory node. */
    const u8 *mreg = fdt_prop("/memory@40000000", "reg", &len);
    if (!mreg) mreg = fdt_prop("/memory@80000000", "reg", &len);
    check(mreg && len == 16 && be64(mreg + 8) >= (64ul << 20), "dtb: a memory node with at least 64 MiB");

    /* CPUs: count them in the DTB, compare with argv's cpus=N, start every one but us. */
    fdt_walk(cpus_fn, 0);
    s64 want = parse_dec(arg_value("cpus"));
    put_str("cpus: "); put_dec(ncpus); put_str(" in the DTB ("); put_str(arch_cpu_id_prop()); put_str(":");
    for (int i = 0; i < ncpus; ++i) { put_char(' '); put_hex(cpu_ids[i]); }
    put_str("), cpus= argument "); put_dec(want); put_char('\n');
    check(want >= 1 && ncpus == want, "cpus: the DTB's CPU count equals the cpus= argument");
    int self_found = 0;
    for (int i = 0; i < ncpus; ++i) self_found |= cpu_ids[i] == boot_id;
    check(self_found, "cpus: the boot CPU is one of the DTB's CPUs");
    check(arch_self_id() == boot_id, "cpus: the boot register's CPU id is this CPU's");

    arch_firmware_check();

    /* Timer. */
    const u8 *tb = fdt_prop("/cpus", "timebase-frequency", &len);
    u64 dt_freq = tb ? cells(tb, len) : 0, hw_freq = arch_counter_freq(dtb);
    u64 freq = hw_freq ? hw_freq : dt_freq;
    put_str("timer: "); put_str(arch_counter_name()); put_str(" frequency "); put_dec((s64)freq);
    put_str(" Hz (DTB timebase-frequency "); put_dec((s64)dt_freq); put_str(")\n");
    if (dt_freq && hw_freq) check(dt_freq == hw_freq, "timer: the DTB's frequency equals the counter's");
    check(freq >= 1000000ul && freq <= 10000000000ul, "timer: counter frequency between 1 MHz and 10 GHz");
    u64 t0 = arch_counter(), t1 = t0;
    for (u64 i = 0; i < 200000000ul && t1 - t0 < freq / 100; ++i) t1 = arch_counter();
    check(t1 - t0 >= freq / 100, "timer: the counter advances (10 ms of ticks seen)");

    /* Secondaries. */
    int started = 0;
    for (int i = 0; i < ncpus; ++i) {
        if (cpu_ids[i] == boot_id) continue;
        current_slot = i;
        seen_flag[i] = 0;
        arch_barrier();
        u64 before = arch_counter();
        s64 r = arch_start_cpu(cpu_ids[i], (u64)(stacks[i] + STACK_SIZE));
        put_str("cpus: start "); put_hex(cpu_ids[i]); put_str(" -> "); put_dec(r); put_char('\n');
        if (!check(r == 0, "cpus: the firmware call to start a secondary succeeded")) continue;
        u64 t = arch_counter();
        while (!seen_flag[i] && arch_counter() - t < 20 * freq) {}
        arch_barrier();
        if (check(seen_flag[i] != 0, "cpus: the secondary ran (within 20 s)")) {
            ++started;
            check(seen_id[i] == cpu_ids[i], "cpus: the secondary is the CPU that was asked for");
            check(seen_counter[i] >= before, "timer: the secondary's counter is not behind the boot CPU's");
        }
    }
    put_str("cpus: "); put_dec(started + 1); put_str(" of "); put_dec(ncpus); put_str(" ran\n");
    check(started + 1 == ncpus, "cpus: every CPU of the DTB ran");

#ifdef UTEST_DELIBERATE_FAIL
    check(0, "deliberate failure (this image proves that a failure is reported)");
#endif
out:
    put_str(UTEST_NAME ": "); put_dec(failures); put_str(" failure(s)\n");
    {
        s64 code = failures > 127 ? 127 : failures;
        put_str("\nEXIT: STATUS="); put_dec((code << 1) | 1); put_char('\n');
    }
    arch_system_off();
}
