#!/bin/sh
# Boots an L2 Linux (Debian's generic kernel, the test bed's own, with a busybox initramfs) under
# QEMU with -enable-kvm and checks its init's marker. Run inside the test bed: proves L1's KVM runs a
# Linux guest to user space. Usage: l2-boot.sh <dir with vmlinuz>
set -eu
kdir=$1
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/proc"
cp /bin/busybox "$work/root/bin/busybox"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "L2_USERSPACE_OK pid=$$ uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox reboot -f
INIT
chmod 755 "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet) > "$work/initramfs.cpio"
timeout 600 qemu-system-x86_64 -enable-kvm -cpu host -M pc -smp 1 -m 256 -nodefaults -display none \
  -no-reboot -serial stdio -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 reboot=k panic=-1 quiet" </dev/null | tee "$work/console.log"
grep -q L2_USERSPACE_OK "$work/console.log"
