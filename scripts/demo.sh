#!/usr/bin/env bash
# Boots one microVM (vpod-vmm, guest kernel + vpod-init), waits for the guest agent over vsock,
# prints the boot timings, powers the guest off. Run through `make demo` (it goes through the test
# bed when this host's /dev/kvm can't run Linux guests).
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=target/release/vpod-vmm
ctl=target/release/examples/agentctl
for f in "$vmm" "$ctl" target/guest/vmlinux target/guest/initramfs.cpio; do
  [ -e "$f" ] || { echo "demo: $f is missing: run 'make build'" >&2; exit 1; }
done
dir=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
t0=$(date +%s%N)
"$vmm" --kernel target/guest/vmlinux --initrd target/guest/initramfs.cpio --vcpus 1 --mem-mib 256 \
  --rng --vsock "$dir/vsock.sock" --console stdout --metrics "$dir/metrics.json" &
pid=$!
"$ctl" "$dir/vsock.sock" --wait 120 ping >/dev/null
t1=$(date +%s%N)
echo "== agent ready $(( (t1 - t0) / 1000000 )) ms after vpod-vmm started"
"$ctl" "$dir/vsock.sock" version
"$ctl" "$dir/vsock.sock" boot-times
"$ctl" "$dir/vsock.sock" shutdown poweroff
rc=0; wait $pid || rc=$?
echo "== vpod-vmm exited $rc (0 = guest powered off)"
echo "== VMM metrics:"; cat "$dir/metrics.json"; echo
