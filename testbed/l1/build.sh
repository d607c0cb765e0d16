#!/usr/bin/env bash
# Builds the test bed's L1 boot files from Debian's generic kernel package:
#   <cache>/l1/<key>/vmlinuz            the kernel (bzImage)
#   <cache>/l1/<key>/initramfs.cpio.gz  busybox + the modules that mount the host root + init.sh
#   <cache>/l1/<key>/modules/           the package's full module tree (with modules.dep), which L1
#                                       bind-mounts at /lib/modules/<release> (it sees the host root)
# and prints the <cache>/l1/<key> dir; a second run costs nothing. Needs: apt-get (root), dpkg, kmod, busybox-static, cpio, gzip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VPOD_CACHE_DIR:-${HOME:-/root}/.cache/vpod}/testbed
err() { echo "testbed build: $*" >&2; exit 1; }

for t in apt-get apt-cache dpkg depmod modprobe cpio gzip; do command -v $t >/dev/null || err "missing tool '$t' (run scripts/install-deps.sh)"; done
[ -x /bin/busybox ] || err "missing /bin/busybox (apt package busybox-static; run scripts/install-deps.sh)"

# The cache key covers this script and init.sh only, so a cached lookup costs no apt query: the kernel
# package is whatever apt offered when the entry was built (kernel.txt records it).
key=$(cat "$here/build.sh" "$here/init.sh" | sha256sum | cut -c1-16)
out=$cache/l1/$key
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ]; then echo "$out"; exit 0; fi
# Two runs building at once: one builds, the other waits and finds it cached.
mkdir -p "$cache"; exec 9>"$cache/.lock"; flock 9
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ]; then echo "$out"; exit 0; fi

# Debian's current generic 6.1 kernel: the package linux-image-amd64 depends on.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
[ -n "$pkg" ] || err "apt knows no linux-image-amd64 dependency (apt-get update?)"
ver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
rel=${pkg#linux-image-}

echo "testbed build: $pkg $ver -> $out" >&2
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg=$ver" >/dev/null 2>"$tmp/apt.err") || { cat "$tmp/apt.err" >&2; err "apt-get download $pkg failed"; }
dpkg -x "$tmp"/linux-image-*.deb "$tmp/x"
depmod -b "$tmp/x" "$rel"
kv=$tmp/x/lib/modules/$rel
[ -f "$tmp/x/boot/vmlinuz-$rel" ] || err "no vmlinuz in $pkg"

# initramfs: busybox, and the modules (dependency order from modprobe) that mount the host root.
r=$tmp/root; mkdir -p "$r"/{bin,sbin,proc,sys,dev,lib/modules}
cp /bin/busybox "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
: > "$r/modules.order"
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$tmp/x" -S "$rel" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r f; do
  cp "$f" "$r/lib/modules/"; basename "$f" >> "$r/modules.order"
done
cp "$here/init.sh" "$r/init"; chmod 755 "$r/init"
printf 'MODVER=%s\nMODDIR=%s\n' "$rel" "$out/modules" > "$r/testbed.conf"
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1 > "$tmp/initramfs.cpio.gz")

mkdir -p "$out.new"
mv "$tmp/x/boot/vmlinuz-$rel" "$out.new/vmlinuz"
mv "$tmp/initramfs.cpio.gz" "$out.new/initramfs.cpio.gz"
mv "$kv" "$out.new/modules"
echo "$pkg $ver" > "$out.new/kernel.txt"
rm -rf "$out"; mv "$out.new" "$out"
# older entries (other script versions) are dead weight: a modules tree is a few hundred MB
find "$cache/l1" -mindepth 1 -maxdepth 1 ! -name "$key" ! -name ".*" -exec rm -rf {} +
echo "$out"
