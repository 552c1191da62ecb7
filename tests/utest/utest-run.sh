#!/usr/bin/env bash
# The kvm-unit-tests style guests of tests/utest on the cross-built vmm_arm64 / vmm_riscv64, on
# real KVM inside the emulated machine of ../shared/xarch (scripts/xarch-run, manifest mode: one
# boot of the machine runs every guest).
#
#   tests/utest/utest-run.sh boot ARCH CROSS_BUILD_DIR VMM_TARGET RESULTS   run them, keep the logs
#   tests/utest/utest-run.sh check ARCH RESULTS NAME                        judge one of them
#
# boot exits 0 when every entry reported (the verdicts are for check), 77 with "SKIPPED: <reason>"
# (also left in RESULTS/skipped for the checks) when the VMM or guests were not cross-built, or
# QEMU or the kit cannot be had. check NAME:
#   conventions      vmm --cpus 2 --cmdline "cpus=2 hello world": no "FAIL: ", at least 24
#                    "PASS: " (18 with 1 vCPU), "cpus: 2 of 2 ran", the VMM saw EXIT: STATUS=1 and exited 1
#   conventions1     the same image with 1 vCPU ("cpus=1 hello")
#   image            the same guest behind the arch's Image header, with --test-image: placed by
#                    the Image loader at the same address, judged as conventions (checked with it)
#   reports_failure  the deliberately failing image: exactly one FAIL (the deliberate one),
#                    EXIT: STATUS=3, VMM exit 3
set -uo pipefail
skip() { echo "SKIPPED: $*"; [[ -n ${results:-} ]] && { mkdir -p "$results"; echo "$*" >"$results/skipped"; }; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
what=${1:?usage: utest-run.sh boot|check ...}
arch=${2:?}

if [[ $what == boot ]]; then
    dir=${3:?} target=${4:?} results=${5:?}
    rm -rf "$results"
    mkdir -p "$results"
    results=$(cd "$results" && pwd)
    dir=$(cd "$dir" 2>/dev/null && pwd -P) || skip "no $arch cross build in $3 (cross.$arch.build skipped or failed)"
    bin=$(find "$dir" -type f -name "$target" -perm -u+x -not -path '*/CMakeFiles/*' 2>/dev/null | head -1)
    [[ -n $bin ]] || skip "$target was not cross-built in $dir (cross.$arch.build skipped or failed)"
    conv=$dir/tests/utest/utest-$arch-conventions.flat
    bad=$dir/tests/utest/utest-$arch-reports_failure.flat
    img=$dir/tests/utest/utest-$arch-image.flat
    [[ -f $conv && -f $bad && -f $img ]] || skip "the $arch unit-test guests were not built in $dir/tests/utest ($arch-linux-gnu-gcc missing?)"
    env=$here/env.txt
    m=$results/manifest
    row() { local IFS=$'\t'; echo "$*"; }
    {
        row conventions "$results" - "$bin" --kernel "$conv" --initrd "$env" --cmdline "cpus=2 hello world" --cpus 2 --mem 128
        row conventions1 "$results" - "$bin" --kernel "$conv" --initrd "$env" --cmdline "cpus=1 hello" --cpus 1 --mem 128
        row reports_failure "$results" - "$bin" --kernel "$bad" --initrd "$env" --cmdline "cpus=1 hello fail" --cpus 1 --mem 128
        row image "$results" - "$bin" --test-image --kernel "$img" --initrd "$env" --cmdline "cpus=2 hello world" --cpus 2 --mem 128
    } >"$m"
    start=$(date +%s)
    VCPU_XARCH_TIMEOUT=${VCPU_XARCH_TIMEOUT:-300} VCPU_XARCH_ENTRY_TIMEOUT=${VCPU_XARCH_ENTRY_TIMEOUT:-120} \
        "$root/scripts/xarch-run" "$arch" --manifest "$m" --results "$results/out" >"$results/xarch.log" 2>&1
    xrc=$?
    if ((xrc == 77)); then
        reason=$(grep -a 'SKIPPED' "$results/xarch.log" | tail -1)
        skip "${reason#SKIPPED: }"
    fi
    echo "utest: $(head -1 "$results/out/machine.txt" 2>/dev/null); $(sed -n 's/^\(qemu wall [^:]*\):.*/\1/p' "$results/out/machine.txt" 2>/dev/null), test wall $(($(date +%s) - start)) s"
    missing=0
    for n in conventions conventions1 reports_failure image; do
        if [[ -f $results/out/$n.rc ]]; then
            echo "utest: $n: vmm exit $(cat "$results/out/$n.rc")"
        else
            echo "utest: FAIL: $n produced no result"
            missing=1
        fi
    done
    if ((missing)); then
        tail -40 "$results/xarch.log"
        exit 1
    fi
    exit 0
fi

[[ $what == check ]] || { echo "utest-run.sh: unknown action '$what'" >&2; exit 2; }
results=${3:?} name=${4:?}
if [[ -f $results/skipped ]]; then echo "SKIPPED: $(cat "$results/skipped")"; exit 77; fi
fail=0
verdict() { # verdict LOG RC EXPECTED_STATUS LOADER_LINE
    local log=$1 rc=$2 want=$3 how=$4
    grep -a -q -E "$how" "$log" || { echo "utest: FAIL: the VMM did not load the image as expected ($how)"; fail=1; }
    grep -a -q -E "^EXIT: STATUS=$want[^0-9]*\$" "$log" || { echo "utest: FAIL: the guest did not print EXIT: STATUS=$want"; fail=1; }
    grep -a -q "vmm: test image: guest printed EXIT: STATUS=$want, guest powered off (system event), exit status $want" "$log" ||
        { echo "utest: FAIL: the VMM did not end on the guest's power-off with status $want"; fail=1; }
    [[ $rc == "$want" ]] || { echo "utest: FAIL: vmm exited $rc, expected $want"; fail=1; }
}
check_one() { # check_one ENTRY CPUS EXPECTED_STATUS [LOADER_LINE]
    local entry=$1 cpus=$2 want=$3 how=${4:-'^vmm: flat test image'} log=$results/out/$1.log rc min
    min=$((cpus > 1 ? 24 : 18))
    if [[ ! -f $log ]]; then echo "utest: FAIL: no log for $entry (did utest.$arch.boot run?)"; fail=1; return; fi
    rc=$(cat "$results/out/$entry.rc" 2>/dev/null || echo none)
    echo "---- $entry ($cpus vCPU)"
    grep -a -E '^(PASS|FAIL): |^(argv|environ|cpus|timer|psci|sbi|dtb): |^EXIT: |^vmm: (flat|test image|summary)' "$log"
    verdict "$log" "$rc" "$want" "$how"
    grep -a -q -E "^cpus: $cpus of $cpus ran" "$log" || { echo "utest: FAIL: not all $cpus CPUs ran"; fail=1; }
    local passes fails
    passes=$(grep -a -c '^PASS: ' "$log")
    fails=$(grep -a -c '^FAIL: ' "$log")
    ((passes >= min)) || { echo "utest: FAIL: only $passes checks passed (expected at least $min)"; fail=1; }
    if ((want == 1)); then
        ((fails == 0)) || { echo "utest: FAIL: $fails check(s) failed"; fail=1; }
    else
        ((fails == 1)) && grep -a -q '^FAIL: deliberate failure' "$log" ||
            { echo "utest: FAIL: expected exactly the one deliberate failure, saw $fails"; fail=1; }
    fi
}
case $name in
    conventions)
        check_one conventions 2 1
        check_one conventions1 1 1
        check_one image 2 1 '^vmm: (arm64|RISC-V) Image as a test image: entry 0x(40080000|80000000) '
        ;;
    reports_failure) check_one reports_failure 1 3 ;;
    *) echo "utest-run.sh: unknown check '$name'" >&2; exit 2 ;;
esac
((fail)) && exit 1
echo "utest: PASS ($arch $name)"
