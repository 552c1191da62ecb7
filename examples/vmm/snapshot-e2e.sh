#!/usr/bin/env bash
# vmm --snapshot-on / --restore across processes (issue 14), on the host's /dev/kvm, with a
# Multiboot test guest: process 1 boots the guest and writes a snapshot at WHEN, process 2
# (a new vmm) restores it and must end with the guest's pass verdict (exit status 1). The
# snapshot is restored a second time by a third process (the file is mapped copy-on-write,
# never changed), and a corrupted copy must be refused before anything runs.
#
#   snapshot-e2e.sh VMM GUEST ENV_TXT CPUS MODE
#   MODE: port-exit   snapshot at the guest's marker (port 0x5fe), process 1 exits (status 6)
#         port-go     snapshot at the marker, process 1 goes on and must pass too
#         exits-exit  snapshot at the 150th exit to vmm, process 1 exits
#         signal-go   SIGUSR2 once the guest has printed its first line; process 1 goes on
set -uo pipefail
vmm=$1 guest=$2 env=$3 cpus=$4 mode=$5

if [[ ! -c /dev/kvm || -n ${VCPU_FORCE_NO_KVM:-} ]]; then
    echo "SKIPPED: needs /dev/kvm (the host's) to run two vmm processes"
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
snap=$tmp/guest.snap
case $mode in
    port-exit) when=port=0x5fe extra=(--snapshot-and-exit) want1=6 ;;
    port-go) when=port=0x5fe extra=() want1=1 ;;
    exits-exit) when=exit-count=150 extra=(--snapshot-and-exit) want1=6 ;;
    signal-go) when=SIGUSR2 extra=() want1=1 ;;
    *) echo "unknown mode $mode"; exit 2 ;;
esac
fail() { echo "FAIL: $*"; for f in "$tmp"/*.out "$tmp"/*.err; do echo "--- $f"; cat "$f"; done; exit 1; }

"$vmm" --kernel "$guest" --initrd "$env" --cmdline "cpus=$cpus" --cpus "$cpus" --mem 128 --quiet-summary \
    --no-kvm-status 77 --snapshot-on "$when" "$snap" "${extra[@]}" </dev/null >"$tmp/1.out" 2>"$tmp/1.err" &
pid=$!
if [[ $mode == signal-go ]]; then
    for _ in $(seq 400); do
        grep -q "multiboot guest" "$tmp/1.out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.005
    done
    kill -USR2 "$pid" 2>/dev/null
fi
wait "$pid"
s1=$?
if [[ $mode == signal-go && $s1 == 1 ]] && ! grep -q "snapshot written" "$tmp/1.err"; then
    echo "SKIPPED: the guest ended before SIGUSR2 reached vmm (a loaded host); nothing to restore"
    exit 77
fi
[[ $s1 == 77 ]] && { cat "$tmp/1.err"; exit 77; }
[[ $s1 == "$want1" ]] || fail "process 1 exited $s1, expected $want1"
grep -q "vmm: snapshot written to" "$tmp/1.err" || fail "process 1 wrote no snapshot"
if [[ $mode == port-* ]]; then
    # The marker comes after the ACPI checks and before the PM-timer ones.
    grep -q "PASS: acpi: MADT" "$tmp/1.out" || fail "process 1 did not reach the marker"
    if [[ $mode == port-exit ]] && grep -q "pmtimer" "$tmp/1.out"; then fail "process 1 ran past the marker"; fi
fi

for n in 2 3; do
    "$vmm" --restore "$snap" --quiet-summary </dev/null >"$tmp/$n.out" 2>"$tmp/$n.err"
    s=$?
    [[ $s == 1 ]] || fail "restoring process $n exited $s, expected the guest's pass (1)"
    grep -q "SUMMARY: .* 0 failures" "$tmp/$n.out" || fail "restoring process $n: no passing summary"
    if [[ $mode == port-* ]]; then
        grep -q "PASS: pmtimer: steady rate" "$tmp/$n.out" || fail "process $n: no PM-timer check after restore"
        grep -q "PASS: multiboot: EAX" "$tmp/$n.out" && fail "process $n booted again instead of continuing"
    fi
    grep -q "PASS: smp: " "$tmp/$n.out" || fail "process $n: SMP check missing"
done

# A corrupted snapshot (one metadata byte) is refused before any VM is built.
cp "$snap" "$tmp/bad.snap"
printf '\x5a' | dd of="$tmp/bad.snap" bs=1 seek=200 conv=notrunc status=none
"$vmm" --restore "$tmp/bad.snap" --quiet-summary </dev/null >"$tmp/bad.out" 2>"$tmp/bad.err"
s=$?
[[ $s == 2 ]] || fail "a corrupt snapshot: exit $s, expected 2"
grep -q "vmm: --restore: snapshot" "$tmp/bad.err" || fail "a corrupt snapshot: no clear error"
echo "restore of a corrupt snapshot refused: $(cat "$tmp/bad.err")"
echo "PASS: vmm snapshot ($mode, $cpus vCPUs) restored by two new processes"
