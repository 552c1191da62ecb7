#!/usr/bin/env bash
# e2e.sh VMM_STATIC REPO_ROOT -- boots the guest kit's stock Debian kernel + initramfs with vmm
# inside the x86nest emulated machine (QEMU TCG with AMD SVM, so L1 has a real /dev/kvm).
# Passes when the L2 guest prints GUEST-BOOT-OK and vmm exits 0 (the guest ended the VM).
# Exit 77 (ctest: skipped) with the reason when QEMU or the kit is unavailable.
# Env: VCPU_X86NEST (kit dir), VCPU_E2E_CACHE (cache dir, default REPO_ROOT/build/x86nest-cache),
#      VCPU_E2E_CPUS (vCPUs for vmm, default 1), VCPU_E2E_TIMEOUT (QEMU timeout s, default 800).
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

cache=${VCPU_E2E_CACHE:-$root/build/x86nest-cache}
stage=$cache/bin-stage
mkdir -p "$stage"
cp "$vmm" "$stage/vmm"
# x86nest calls an L2 VMM as: VMM KERNEL INITRD "CMDLINE" MEM_MIB.
cat >"$stage/vmm-l2" <<WRAP
#!/bin/sh
exec /bin/vmm --kernel "\$1" --initrd "\$2" --cmdline "\$3 reboot=t" --mem "\$4" --cpus ${VCPU_E2E_CPUS:-1}
WRAP
chmod 755 "$stage/vmm-l2"

echo "== building x86nest in $cache"
# The same lock as scripts/xarch-run x86_64, which reuses this cache's L1 image.
exec 9>"$cache/.lock-x86_64"
flock 9
if ! WORK=$cache EXTRA_BIN="$stage/vmm $stage/vmm-l2" "$kit/build.sh" >"$cache/build.log" 2>&1; then
    tail -20 "$cache/build.log"
    if grep -qiE 'Temporary failure|Could not resolve|Unable to fetch|unable to locate' "$cache/build.log"; then
        skip "x86nest build could not download its packages (offline?)"
    fi
    echo "FAIL: x86nest build.sh failed"
    exit 1
fi
flock -u 9
echo "== running (L2=vmm-l2)"
# no_timer_check: on a loaded host, TCG can starve the kernels' IO-APIC timer probe
# ("8254 timer not connected to IO-APIC" panic in L1), which is not what this test checks.
WORK=$cache L2=vmm-l2 TIMEOUT=${VCPU_E2E_TIMEOUT:-800} L2TIMEOUT=600 APPEND_EXTRA=no_timer_check \
    L2EXTRA=${VCPU_E2E_L2EXTRA:-no_timer_check} "$kit/run.sh" 1000
rc=$?
log=$cache/run.log
echo "== x86nest run.sh rc=$rc"
grep -q 'GUEST-BOOT-OK' "$log" || { echo "FAIL: the L2 guest never printed GUEST-BOOT-OK"; exit 1; }
grep -q 'X86NEST: L2 exit rc=0 (vmm-l2' "$log" || { echo "FAIL: vmm did not exit 0 (guest did not end the VM cleanly)"; grep 'L2 exit rc' "$log"; exit 1; }
grep -a 'vmm: ' "$log" | sed 's/^/summary| /'
echo "PASS: GUEST-BOOT-OK and a clean VM end"
