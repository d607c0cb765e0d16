#!/usr/bin/env bash
# Boots the vpod initramfs under QEMU TCG (`-M microvm,acpi=off`, no KVM
# needed) and checks that vpod-init, as PID 1, sets the guest up and gets the
# agent listening. QEMU's microvm has no vsock device here (that needs
# /dev/vhost-vsock), so the agent is not called: this checks PID 1's boot
# path and measures kernel -> init -> agent listening under TCG.
#
# Timing: `-icount shift=0` makes guest time count executed instructions
# (1 ns each) and the guest TSC is declared 1 GHz, so the times printed are
# deterministic "instruction-nanoseconds", comparable between runs however
# loaded the host is (but not real-hardware times: no exit, cache or page
# fault costs).
#
# Usage: guest-init/qemu-boot-check.sh [VMLINUX [INITRAMFS]]
#   defaults: <repo>/target/guest/vmlinux, <repo>/target/guest/initramfs.cpio
# Environment: VPOD_QEMU_TIMEOUT seconds before the guest is declared hung (default 120)
# Exit status 0 only if the console shows the "agent listening" line and no
# fatal error. The console log is kept in <repo>/target/guest/qemu-boot-check.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
vmlinux=${1:-$repo/target/guest/vmlinux}
initramfs=${2:-$repo/target/guest/initramfs.cpio}
timeout=${VPOD_QEMU_TIMEOUT:-120}
log=$repo/target/guest/qemu-boot-check.log

for f in "$vmlinux" "$initramfs"; do
  [ -f "$f" ] || { echo "qemu-boot-check: $f not found (images/kernel/build.sh, guest-init/build-initramfs.sh)" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-boot-check: qemu-system-x86_64 missing; run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$(dirname "$log")"
: >"$log"

# vpod.verbose echoes vpod-init's info lines (mounts, cgroups, entropy) to the console.
qemu-system-x86_64 -M microvm,acpi=off -accel tcg -icount shift=0 -cpu max -m 256 -smp 1 \
  -nographic -no-reboot -nodefaults -serial stdio \
  -device virtio-rng-device \
  -kernel "$vmlinux" -initrd "$initramfs" \
  -append "console=ttyS0 reboot=t panic=-1 tsc_early_khz=1000000 tsc=reliable vpod.verbose vpod.hostname=qemu-check" \
  </dev/null >"$log" 2>&1 &
qemu=$!
trap 'kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true' EXIT

# The agent keeps running after it listens; wait a little longer for the
# entropy thread's line, then stop the VM.
status=1
deadline=$((SECONDS + timeout))
while [ $SECONDS -lt $deadline ]; do
  if grep -q "vpod-init: fatal" "$log"; then
    status=1
    break
  fi
  if grep -q "vpod-init: agent listening on vsock port" "$log"; then
    sleep 2
    status=0
    break
  fi
  if ! kill -0 "$qemu" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

grep -E "vpod-init:|Run /init|Kernel panic" "$log" || true
# PID 1 must have set the system up (not only served) and seeded entropy
# from the virtio-rng device.
for want in "vpod-init: system setup done" "vpod-init: credited 512 bits from /dev/hwrng"; do
  if [ $status -eq 0 ] && ! grep -q "$want" "$log"; then
    echo "qemu-boot-check: console lacks \"$want\"" >&2
    status=1
  fi
done
if [ $status -ne 0 ]; then
  echo "qemu-boot-check: FAILED (see $log)" >&2
  exit 1
fi
echo "qemu-boot-check: ok (console log: $log)"
