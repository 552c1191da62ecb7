#!/usr/bin/env bash
# The AArch64 / RISC-V guest-code tests (vcpu_guest_tests of the cross build: tests/guest/xarch_*.cpp
# and <arch>_*.cpp) on real KVM inside the emulated machine of ../shared/xarch: one boot runs every
# test file as its own doctest run (scripts/xarch-run, manifest mode), the checks judge them.
#
#   tests/guest/xarch-run.sh boot ARCH CROSS_BUILD_DIR RESULTS   run them, keep the logs
#   tests/guest/xarch-run.sh check ARCH RESULTS NAME             judge one of them
#
# NAME: basics, exceptions, pending_io, state, features, irqchip (doctest exit status 0 and no failed case) or bench (the
# same, and the "GUEST-BENCH" line is printed). boot exits 0 when every entry reported, 77 with
# "SKIPPED: <reason>" (also left in RESULTS/skipped for the checks) when the tests were not
# cross-built or QEMU or the kit cannot be had.
set -uo pipefail
skip() { echo "SKIPPED: $*"; [[ -n ${results:-} ]] && { mkdir -p "$results"; echo "$*" >"$results/skipped"; }; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
what=${1:?usage: xarch-run.sh boot|check ...}
arch=${2:?}
names=(basics exceptions pending_io bench state features irqchip)
source_of() { # the test file of NAME
    case $1 in
        basics | bench | state) echo "xarch_$1.cpp" ;;
        *) echo "${arch}_$1.cpp" ;;
    esac
}

if [[ $what == boot ]]; then
    dir=${3:?} results=${4:?}
    rm -rf "$results"
    mkdir -p "$results"
    results=$(cd "$results" && pwd)
    dir=$(cd "$dir" 2>/dev/null && pwd -P) || skip "no $arch cross build in $3 (cross.$arch.build skipped or failed)"
    bin=$dir/tests/guest/vcpu_guest_tests
    [[ -x $bin ]] || skip "vcpu_guest_tests was not cross-built in $dir/tests/guest (cross.$arch.build skipped or failed)"
    m=$results/manifest
    for n in "${names[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$results" - "$bin" "--source-file=*/$(source_of "$n")" --no-intro --no-version
    done >"$m"
    start=$(date +%s)
    VCPU_XARCH_TIMEOUT=${VCPU_XARCH_TIMEOUT:-300} VCPU_XARCH_ENTRY_TIMEOUT=${VCPU_XARCH_ENTRY_TIMEOUT:-120} \
        "$root/scripts/xarch-run" "$arch" --manifest "$m" --results "$results/out" >"$results/xarch.log" 2>&1
    if (($? == 77)); then
        reason=$(grep -a 'SKIPPED' "$results/xarch.log" | tail -1)
        skip "${reason#SKIPPED: }"
    fi
    echo "guest: $(head -1 "$results/out/machine.txt" 2>/dev/null); test wall $(($(date +%s) - start)) s"
    missing=0
    for n in "${names[@]}"; do
        if [[ -f $results/out/$n.rc ]]; then
            echo "guest: $n: exit $(cat "$results/out/$n.rc")"
        else
            echo "guest: FAIL: $n produced no result"
            missing=1
        fi
    done
    if ((missing)); then
        tail -40 "$results/xarch.log"
        exit 1
    fi
    exit 0
fi

[[ $what == check ]] || { echo "xarch-run.sh: unknown action '$what'" >&2; exit 2; }
results=${3:?} name=${4:?}
if [[ -f $results/skipped ]]; then echo "SKIPPED: $(cat "$results/skipped")"; exit 77; fi
log=$results/out/$name.log
[[ -f $log ]] || { echo "guest: FAIL: no log for $name (did guest.$arch.boot run?)"; exit 1; }
cat "$log"
rc=$(cat "$results/out/$name.rc" 2>/dev/null || echo none)
fail=0
[[ $rc == 0 ]] || { echo "guest: FAIL: $name exited $rc"; fail=1; }
grep -a -q -E '^\[doctest\] test cases: +[0-9]+ \| +[0-9]+ passed \| 0 failed' "$log" ||
    { echo "guest: FAIL: $name: doctest did not report every case passed"; fail=1; }
if [[ $name == bench ]]; then
    grep -a -q "^GUEST-BENCH $arch: " "$log" || { echo "guest: FAIL: no GUEST-BENCH line"; fail=1; }
fi
((fail)) && exit 1
echo "guest: PASS ($arch $name)"
