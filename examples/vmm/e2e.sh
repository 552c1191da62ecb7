#!/usr/bin/env bash
# e2e.sh VMM_STATIC REPO_ROOT -- boots the guest kit's stock Debian kernel + initramfs with vmm
# inside the x86nest emulated machine (QEMU TCG with AMD SVM, so L1 has a real /dev/kvm).
# Passes when every L2 boot prints GUEST-BOOT-OK and vmm exits 0 (the guest ended the VM)
# within its timeout, with every vCPU thread stopped.
# Exit 77 (ctest: skipped) with the reason when QEMU or the kit is unavailable.
# Env: VCPU_X86NEST (kit dir), VCPU_E2E_CACHE (cache dir, default REPO_ROOT/build/x86nest-cache),
#      VCPU_E2E_CPUS (vCPUs for vmm, default 2),
#      VCPU_E2E_RUNS (L2 boots in this one L1 boot, one vCPU count each, e.g. "2 2 2 4";
#        default "$VCPU_E2E_CPUS"; an entry bN boots VCPU_E2E_BASELINE, another vmm-static,
#        with N vCPUs, for before/after figures from the same nested run),
#      VCPU_E2E_L2TIMEOUT (seconds per L2 boot, default 600),
#      VCPU_E2E_SNAPSHOT=1 (each L2 boot: vmm --snapshot-on boot-ok FILE --snapshot-and-exit, then
#        a second vmm --restore FILE that must continue the guest to its end; issue 14),
#      VCPU_E2E_TIMEOUT (QEMU timeout s, default 200 + runs x L2 timeout).
set -uo pipefail
vmm=$1
root=$2
skip() { echo "SKIPPED: $*"; exit 77; }

kit=${VCPU_X86NEST:-}
for k in "$kit" "$root/../shared/x86nest"; do
    [[ -n "$k" && -x "$k/run.sh" ]] && { kit=$k; break; }
done
[[ -x "$kit/run.sh" ]] || skip "x86nest kit not found (set VCPU_X86NEST)"
if ! command -v qemu-system-x86_64 >/dev/null; then
    "$root/scripts/deps" qemu >/dev/null 2>&1 || true
    command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 cannot be installed (scripts/deps qemu)"
fi
[[ -x "$vmm" ]] || { echo "FAIL: $vmm not built"; exit 1; }

runs=${VCPU_E2E_RUNS:-${VCPU_E2E_CPUS:-2}}
l2timeout=${VCPU_E2E_L2TIMEOUT:-600}
cache=${VCPU_E2E_CACHE:-$root/build/x86nest-cache}
stage=$cache/bin-stage
rm -rf "$stage"
mkdir -p "$stage"
cp "$vmm" "$stage/vmm"
bins=("$stage/vmm")
# x86nest calls an L2 VMM as: VMM KERNEL INITRD "CMDLINE" MEM_MIB; one wrapper per vCPU count.
l2list=
n=0
for r in $runs; do
    bin=vmm
    cpus=$r
    if [[ $r == b* ]]; then
        cpus=${r#b}
        bin=vmm-baseline
        [[ -x "${VCPU_E2E_BASELINE:-}" ]] || { echo "FAIL: run $r needs VCPU_E2E_BASELINE"; exit 1; }
        [[ -e "$stage/vmm-baseline" ]] || { cp "$VCPU_E2E_BASELINE" "$stage/vmm-baseline"; bins+=("$stage/vmm-baseline"); }
    fi
    [[ $cpus =~ ^[0-9]+$ ]] || { echo "FAIL: bad entry '$r' in VCPU_E2E_RUNS"; exit 1; }
    w=$bin-l2-c$cpus
    if [[ ! -e "$stage/$w" ]]; then
        if [[ -n ${VCPU_E2E_SNAPSHOT:-} ]]; then
            cat >"$stage/$w" <<WRAP
#!/bin/sh
/bin/$bin --kernel "\$1" --initrd "\$2" --cmdline "\$3 reboot=t" --mem "\$4" --cpus $cpus \\
    --snapshot-on boot-ok /l2-vmm.snap --snapshot-and-exit || exit \$?
echo "X86NEST-SNAPSHOT: restoring in a new vmm process"
/bin/$bin --restore /l2-vmm.snap
rc=\$?
rm -f /l2-vmm.snap
exit \$rc
WRAP
        else
            cat >"$stage/$w" <<WRAP
#!/bin/sh
exec /bin/$bin --kernel "\$1" --initrd "\$2" --cmdline "\$3 reboot=t" --mem "\$4" --cpus $cpus
WRAP
        fi
        chmod 755 "$stage/$w"
        bins+=("$stage/$w")
    fi
    l2list+=${l2list:+,}$w
    n=$((n + 1))
done

echo "== building x86nest in $cache"
# The same lock as scripts/xarch-run x86_64, which reuses this cache's L1 image.
exec 9>"$cache/.lock-x86_64"
flock 9
if ! WORK=$cache EXTRA_BIN="${bins[*]}" "$kit/build.sh" >"$cache/build.log" 2>&1; then
    tail -20 "$cache/build.log"
    if grep -qiE 'Temporary failure|Could not resolve|Unable to fetch|unable to locate' "$cache/build.log"; then
        skip "x86nest build could not download its packages (offline?)"
    fi
    echo "FAIL: x86nest build.sh failed"
    exit 1
fi
flock -u 9
echo "== running $n L2 boot(s) in one L1 boot: $l2list (each bounded by $l2timeout s)"
# no_timer_check: on a loaded host, TCG can starve the kernels' IO-APIC timer probe
# ("8254 timer not connected to IO-APIC" panic in L1), which is not what this test checks.
WORK=$cache L2=$l2list TIMEOUT=${VCPU_E2E_TIMEOUT:-$((200 + n * l2timeout))} L2TIMEOUT=$l2timeout \
    APPEND_EXTRA=no_timer_check L2EXTRA=${VCPU_E2E_L2EXTRA:-no_timer_check} "$kit/run.sh" 1000
rc=$?
log=$cache/run.log
echo "== x86nest run.sh rc=$rc"
grep -a -E 'X86NEST: L2 exit rc|vmm: (summary|  time to|  exits to|  userspace|  writes|vCPU .* did not stop)' "$log" |
    sed 's/^/summary| /'
started=$(grep -ac 'X86NEST: L2 boot start' "$log")
ok=$(grep -acE '\] GUEST-BOOT-OK\s*$' "$log")
# A snapshot at GUEST-BOOT-OK is taken right after its last byte: vmm's own line follows on it.
[[ -n ${VCPU_E2E_SNAPSHOT:-} ]] && ok=$(grep -acE '\] GUEST-BOOT-OK' "$log")
clean=$(grep -ac 'X86NEST: L2 exit rc=0 (' "$log")
stuck=$(grep -ac 'did not stop within' "$log")
echo "== $n boot(s) asked, $started started, $ok printed GUEST-BOOT-OK, $clean ended cleanly (vmm exit 0), $stuck vCPU stop delay(s)"
[[ $started -eq $n ]] || { echo "FAIL: only $started of $n L2 boots started (L1 timed out?)"; exit 1; }
[[ $ok -ge $n ]] || { echo "FAIL: only $ok of $n L2 guests printed GUEST-BOOT-OK"; exit 1; }
[[ $clean -eq $n ]] || { echo "FAIL: vmm did not exit 0 in $((n - clean)) of $n boots (hang killed by the timeout, or an error)"; exit 1; }
[[ $stuck -eq 0 ]] || { echo "FAIL: a vCPU thread did not stop within 2 s of the kick"; exit 1; }
if [[ -n ${VCPU_E2E_SNAPSHOT:-} ]]; then
    snaps=$(grep -ac 'vmm: snapshot written to' "$log")
    restored=$(grep -ac 'vmm: restored /l2-vmm.snap (Linux' "$log")
    # The guest's init prints its kernel version right after GUEST-BOOT-OK: in the restored process.
    after=$(grep -a -A400 'vmm: restored /l2-vmm.snap' "$log" | grep -ac 'guest-kernel:')
    echo "== snapshot: $snaps written at GUEST-BOOT-OK, $restored restored by a new vmm, $after continued to the guest's next line"
    [[ $snaps -eq $n && $restored -eq $n && $after -ge $n ]] || { echo "FAIL: snapshot/restore did not complete in every boot"; exit 1; }
    echo "PASS: $n L2 boot(s) snapshotted at GUEST-BOOT-OK and restored by a new vmm process, which ended the VM cleanly"
    exit 0
fi
echo "PASS: $n L2 boot(s), each printed GUEST-BOOT-OK and ended the VM cleanly"
