#!/usr/bin/env bash
# e2e.<arch>.linux: the cross-built, static vmm_arm64 / vmm_riscv64 boots Debian's kernel with an
# initramfs (tests/e2e/linux-guest) on real KVM inside the emulated machine of ../shared/xarch
# (scripts/xarch-run), with 2 vCPUs, and must print GUEST-BOOT-OK, see both CPUs online, and end
# with the guest's power-off (PSCI SYSTEM_OFF / SBI SRST -> exit 0). Prints the VMM's timing and
# exit summary.
#
#   tests/e2e/e2e-linux.sh ARCH CROSS_BUILD_DIR VMM_TARGET KERNEL_FILE [VMM ARGS...]
#
# KERNEL_FILE: Image or Image.gz (of tests/e2e/linux-guest's output). Exit 77 with "SKIPPED:
# <reason>" when the VMM was not cross-built, or the guest, QEMU or the kit cannot be had.
# Env: VCPU_XARCH_TIMEOUT (QEMU run per attempt, default 300 s), VCPU_E2E_CPUS (2), VCPU_E2E_MEM (256 MiB).
set -uo pipefail
skip() { echo "SKIPPED: $*"; exit 77; }
arch=${1:?usage: e2e-linux.sh ARCH DIR TARGET KERNEL_FILE}
dir=${2:?}
target=${3:?}
kfile=${4:?}
shift 4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cpus=${VCPU_E2E_CPUS:-2}

bin=$(find "$(cd "$dir" 2>/dev/null && pwd)" -type f -name "$target" -perm -u+x -not -path '*/CMakeFiles/*' 2>/dev/null | head -1)
[[ -n $bin ]] || skip "$target was not cross-built in $dir (cross.$arch.build skipped or failed)"
guest=$root/build/linux-guest-$arch
"$here/linux-guest" "$arch" "$guest"
rc=$?
((rc == 77)) && exit 77
((rc == 0)) || { echo "e2e: building the $arch guest failed"; exit 1; }

results=$(mktemp -d "${TMPDIR:-/tmp}/e2e-linux-$arch.XXXXXX")
trap 'rm -rf "$results"' EXIT
manifest=$results/manifest
printf '%s\t%s\t-\t%s\t--kernel\t%s\t--initrd\t%s\t--cpus\t%s\t--mem\t%s' linux "$guest" "$bin" \
    "$guest/$kfile" "$guest/initramfs.cpio.gz" "$cpus" "${VCPU_E2E_MEM:-256}" >"$manifest"
for a in "$@"; do printf '\t%s' "$a" >>"$manifest"; done
echo >>"$manifest"
start=$(date +%s)
# Two attempts: once (under a load average of 10 on this 2-core host) the emulated riscv64
# machine's own kernel printed nothing after OpenSBI for 600 s. A retry happens only when the
# machine never reached its /init, i.e. before the VMM ran; a VMM failure is never retried.
for attempt in 1 2; do
    rm -rf "$results/out"
    VCPU_XARCH_TIMEOUT=${VCPU_XARCH_TIMEOUT:-300} "$root/scripts/xarch-run" "$arch" --manifest "$manifest" \
        --results "$results/out" >"$results/xarch.log" 2>&1
    xrc=$?
    ((xrc == 77)) && break
    if ((attempt == 1)) && ! grep -a -q 'XARCH-RUN: init' "$results/out/console.log" 2>/dev/null; then
        echo "e2e: the emulated $arch machine did not reach its /init (xarch-run exit $xrc; last line: $(tail -1 "$results/out/console.log" 2>/dev/null)); retrying once"
        continue
    fi
    break
done
if ((xrc == 77)); then
    grep -a 'SKIPPED' "$results/xarch.log" | tail -1
    exit 77
fi
log=$results/out/linux.log
if [[ ! -f $log ]]; then
    tail -40 "$results/xarch.log"
    echo "e2e: FAIL: the machine produced no result for the VMM (xarch-run exit $xrc)"
    exit 1
fi
grep -a -E '^vmm:|GUEST-BOOT-OK|guest-|SMP|Linux version|reboot:' "$log"
echo "e2e: machine: $(head -1 "$results/out/machine.txt"); $(sed -n 's/^\(qemu wall [^:]*\):.*/\1/p' "$results/out/machine.txt"), test wall $(($(date +%s) - start)) s"
fail=0
check() { grep -a -q -E "$1" "$log" || { echo "e2e: FAIL: $2"; fail=1; }; }
check '^GUEST-BOOT-OK' "no GUEST-BOOT-OK"
if ((cpus == 2)); then check '^guest-cpus-online: 0-1' "the guest did not bring both vCPUs online"; fi
# The console's interrupts reached the guest (vGIC SPI / userspace PLIC): a count above 0 on a CPU.
check '^guest-uart-irqs: *[0-9]+: *(0 +)*[1-9]' "the UART's interrupt never reached the guest (/proc/interrupts)"
check 'vmm: summary .*guest powered off \(system event\)' "the VM did not end with the guest's power-off"
check 'system event 1,' "not exactly one system-event exit"
vrc=$(cat "$results/out/linux.rc" 2>/dev/null || echo none)
[[ $vrc == 0 ]] || { echo "e2e: FAIL: $target exited $vrc"; fail=1; }
if ((fail)); then
    echo "---- last lines of the VMM's output"
    tail -30 "$log"
    exit 1
fi
echo "e2e: PASS ($arch, $cpus vCPUs)"
