#!/usr/bin/env bash
# vmm --gdb against Debian's gdb in batch mode, on the host's /dev/kvm, with the x86-64 Multiboot
# test guest: gdb connects before the guest runs, breaks at a guest function by its symbol
# (check_testdev, from the guest's ELF64 with debug info), shows RIP and a guest variable (argc:
# "KERNEL-PATH cpus=1" is two words), single-steps, and detaches; the guest then runs to its
# verdict and vmm must exit with the guest's pass status (1).
#
#   gdb-e2e.sh VMM GUEST_ELF32 GUEST_ELF64_WITH_SYMBOLS ENV_TXT
set -uo pipefail
vmm=$1 guest=$2 symbols=$3 env=$4

command -v gdb >/dev/null || { echo "gdb is not installed (scripts/deps installs Debian's gdb)"; exit 1; }
if [[ ! -c /dev/kvm || -n ${VCPU_FORCE_NO_KVM:-} ]]; then
    # gdb does not run inside the nested x86 machine; guest.x86_64.debug_gdb's scripted-client
    # case covers the stub there.
    echo "SKIPPED: needs the host's /dev/kvm to run gdb next to vmm"
    exit 77
fi
tmp=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

"$vmm" --gdb 0 --kernel "$guest" --initrd "$env" --cmdline "cpus=1" --cpus 1 --mem 128 --no-kvm-status 77 >"$tmp/console" 2>"$tmp/vmm" &
pid=$!
port=
for _ in $(seq 200); do
    port=$(sed -n 's/.*waiting for gdb on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/vmm")
    [[ -n $port ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
if [[ -z $port ]]; then
    wait "$pid"
    rc=$?
    cat "$tmp/vmm"
    [[ $rc == 77 ]] && { echo "SKIPPED: vmm cannot use KVM here"; exit 77; }
    echo "FAIL: vmm did not offer a gdb port"
    exit 1
fi

timeout 120 gdb -nx -q -batch \
    -ex "target remote 127.0.0.1:$port" \
    -ex "break check_testdev" -ex "continue" \
    -ex "info registers rip" -ex "print argc" \
    -ex "stepi" -ex "info symbol \$pc" \
    -ex "delete" -ex "detach" \
    "$symbols" >"$tmp/gdb" 2>&1
gdb_rc=$?
for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && { echo "FAIL: vmm still running 60 s after gdb detached"; kill -9 "$pid"; }
wait "$pid"
vmm_rc=$?
pid=

echo "---- gdb (exit $gdb_rc)"; cat "$tmp/gdb"
echo "---- vmm (exit $vmm_rc)"; cat "$tmp/vmm"
echo "---- guest console"; cat "$tmp/console"
fail=0
check() { grep -q -- "$2" "$tmp/$1" || { echo "FAIL: $1 output lacks: $2"; fail=1; }; }
check gdb "Breakpoint 1, check_testdev"
check gdb "^rip  *0x[0-9a-f]*  *0x[0-9a-f]* <" # (check_testdev is inlined into its caller)
check gdb "^\$1 = 2$"
check gdb " + [0-9]* in section .text" # where the step ended
check gdb "(Remote target) detached"
check vmm "gdb detached; the guest runs on"
check console "testdev"
((gdb_rc == 0)) || { echo "FAIL: gdb exited $gdb_rc"; fail=1; }
((vmm_rc == 1)) || { echo "FAIL: vmm exited $vmm_rc, not the guest's pass status 1"; fail=1; }
((fail == 0)) && echo "PASS: gdb debugged the Multiboot guest through vmm --gdb"
exit $fail
