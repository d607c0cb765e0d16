#!/usr/bin/env bash
# Installs the Debian packages vpod's build, tests and benchmarks need.
# Idempotent: apt-get skips what is already installed.
set -euo pipefail

PKGS=(
  # test bed (L1): QEMU TCG with an emulated SVM CPU, busybox for its initramfs, cpio/gzip to pack it
  qemu-system-x86 busybox-static cpio gzip kmod
  # guest kernel build from Debian's source
  linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils
  # images and disks
  erofs-utils e2fsprogs
  # image pull tests: a local registry (distribution 2.8), htpasswd for its basic auth, and the
  # openssl CLI that makes and signs the test token server's certificate and JWTs
  docker-registry apache2-utils openssl
  # agent API code generation
  protobuf-compiler
  # network tests; iptables-restore loads the port-forward steering rule in a pod's netns
  iproute2 iptables
  # the containerd shim's tests: Debian's containerd 1.6 (and ctr), runc beside it
  containerd runc containernetworking-plugins
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: ok" >&2
