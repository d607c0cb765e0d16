#!/usr/bin/env bash
# Builds the vpod guest kernel (an uncompressed, PVH-bootable vmlinux) from Debian's
# linux-source-6.1: `tinyconfig` + images/kernel/vpod-guest.config, then checks that every
# line of the fragment survived Kconfig, builds, and caches the result.
#
# Usage: images/kernel/build.sh
#   stdout: the path of the installed vmlinux (<repo>/target/guest/vmlinux), nothing else
#   stderr: progress and errors
# Environment:
#   VPOD_CACHE_DIR   cache root (default ~/.cache/vpod); the kernel lives under kernel/
#   VPOD_KERNEL_JOBS parallel make jobs (default: nproc)
#
# Cache layout (under $VPOD_CACHE_DIR/kernel):
#   src/<debian-version>/linux-source-6.1/  pristine source, extracted once per package version
#   build/<debian-version>/                 out-of-tree object dir, reused so fragment edits rebuild
#                                           only what changed
#   <key>/vmlinux, <key>/config             results; key = sha256(fragment, source package
#                                           version, this script, compiler version)
set -euo pipefail

log() { echo "kernel/build.sh: $*" >&2; }
die() {
  echo "kernel/build.sh: error: $*" >&2
  exit 1
}

main() {
  HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  REPO=$(cd "$HERE/../.." && pwd)
  FRAGMENT=$HERE/vpod-guest.config
  SCRIPT=$HERE/build.sh
  SRC_PKG=linux-source-6.1
  SRC_TARBALL=/usr/src/$SRC_PKG.tar.xz
  CACHE_ROOT=${VPOD_CACHE_DIR:-${HOME:?HOME is not set; set VPOD_CACHE_DIR}/.cache/vpod}
  CACHE=$CACHE_ROOT/kernel
  OUT_DIR=$REPO/target/guest
  OUT=$OUT_DIR/vmlinux
  JOBS=${VPOD_KERNEL_JOBS:-$(nproc)}
  # Reproducible build: no user, host, build count or date of the build machine. The date is the
  # Debian source package's release date; it also stamps the files of the built-in initramfs.
  export KBUILD_BUILD_USER=vpod KBUILD_BUILD_HOST=vpod KBUILD_BUILD_VERSION=1

  # ---- prerequisites -------------------------------------------------------------------
  [[ $(uname -m) == x86_64 ]] || die "the guest kernel is built natively for x86_64; this host is $(uname -m)"
  [[ -f $FRAGMENT ]] || die "config fragment not found: $FRAGMENT"
  missing=()
  for tool in make gcc ld bc bison flex tar xz sha256sum readelf flock dpkg-query; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ -e /usr/include/gelf.h ]] || missing+=("libelf-dev (gelf.h, for objtool)")
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]}; run scripts/install-deps.sh"
  SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
    die "package $SRC_PKG is not installed; run scripts/install-deps.sh"
  [[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL is missing although $SRC_PKG $SRC_VERSION is installed"
  SRC_DATE=$(zcat "/usr/share/doc/$SRC_PKG/changelog.Debian.gz" 2>/dev/null | sed -n '/^ -- /{s/^ -- .*>  //p;q}') || true
  if [[ -z $SRC_DATE ]] || ! date -d "$SRC_DATE" >/dev/null 2>&1; then
    SRC_DATE="1970-01-01 00:00:00 UTC"
  fi
  export KBUILD_BUILD_TIMESTAMP=$SRC_DATE

  # ---- cache lookup --------------------------------------------------------------------
  # The fragment is read once: the key, the merge and the verification all use this text,
  # even if someone edits the file while the build runs.
  FRAGMENT_TEXT=$(<"$FRAGMENT")
  KEY=$(
    {
      printf 'fragment\n%s\n' "$FRAGMENT_TEXT"
      printf 'source %s %s\n' "$SRC_PKG" "$SRC_VERSION"
      printf 'script\n'
      cat "$SCRIPT"
      printf 'cc %s\n' "$(gcc --version | head -n1)"
    } | sha256sum | cut -c1-32
  )
  RESULT=$CACHE/$KEY

  install_result() {
    mkdir -p "$OUT_DIR"
    # A copy, not a symlink: target/ is shared into the test-bed VM, where $HOME's cache is not.
    if ! cmp -s "$RESULT/vmlinux" "$OUT"; then
      cp -f "$RESULT/vmlinux" "$OUT.tmp.$$"
      mv -f "$OUT.tmp.$$" "$OUT"
    fi
    cp -f "$RESULT/config" "$OUT_DIR/vmlinux.config"
    echo "$OUT"
  }

  if [[ -f $RESULT/vmlinux ]]; then
    log "cached: $RESULT/vmlinux"
    install_result
    exit 0
  fi

  mkdir -p "$CACHE"
  # One build at a time per cache; a second caller waits, then finds the result cached.
  exec 9>"$CACHE/.lock"
  if ! flock -n 9; then
    log "another kernel build holds $CACHE/.lock; waiting"
    flock 9
  fi
  if [[ -f $RESULT/vmlinux ]]; then
    log "cached (built by a concurrent run): $RESULT/vmlinux"
    install_result
    exit 0
  fi

  # ---- source --------------------------------------------------------------------------
  SRC_PARENT=$CACHE/src/$SRC_VERSION
  SRC=$SRC_PARENT/$SRC_PKG
  if [[ ! -f $SRC_PARENT/.extracted ]]; then
    log "extracting $SRC_TARBALL ($SRC_VERSION) into $SRC_PARENT"
    rm -rf "$SRC_PARENT"
    mkdir -p "$SRC_PARENT"
    nice tar -xf "$SRC_TARBALL" -C "$SRC_PARENT" || die "extracting $SRC_TARBALL failed"
    [[ -f $SRC/Makefile ]] || die "$SRC_TARBALL did not contain $SRC_PKG/Makefile"
    touch "$SRC_PARENT/.extracted"
  fi

  BUILD=$CACHE/build/$SRC_VERSION
  mkdir -p "$BUILD"
  LOG=$BUILD/build.log
  : >"$LOG"
  kmake() {
    nice make -C "$SRC" O="$BUILD" ARCH=x86_64 "$@" >>"$LOG" 2>&1
  }
  fail_with_log() {
    tail -n 40 "$LOG" >&2
    die "$* (full log: $LOG)"
  }

  # ---- configure -----------------------------------------------------------------------
  log "configuring: tinyconfig + $(basename "$FRAGMENT")"
  SNAPSHOT=$BUILD/vpod-guest.config
  printf '%s\n' "$FRAGMENT_TEXT" >"$SNAPSHOT"
  kmake tinyconfig || fail_with_log "make tinyconfig failed"
  "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$SNAPSHOT" >>"$LOG" 2>&1 ||
    fail_with_log "merge_config.sh failed"
  kmake olddefconfig || fail_with_log "make olddefconfig failed"

  # Every line of the fragment must be in the final config. Kconfig silently drops a
  # setting whose dependencies are not met, so this is where a missing dependency shows up.
  declare -A final=()
  while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      final[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
    fi
  done <"$BUILD/.config"
  errors=()
  lineno=0
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      opt=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
      if [[ $want == n ]]; then
        [[ -z ${final[$opt]+x} ]] || errors+=("$opt: wanted n, got ${final[$opt]}")
      elif [[ -z ${final[$opt]+x} ]]; then
        errors+=("$opt: wanted $want, got not set (unmet dependency?)")
      elif [[ ${final[$opt]} != "$want" ]]; then
        errors+=("$opt: wanted $want, got ${final[$opt]}")
      fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
      opt=${BASH_REMATCH[1]}
      [[ -z ${final[$opt]+x} ]] || errors+=("$opt: wanted not set, got ${final[$opt]} (selected by another option?)")
    elif [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then
      continue
    else
      die "$FRAGMENT:$lineno: not a config line: $line"
    fi
  done <"$SNAPSHOT"
  if ((${#errors[@]})); then
    printf '  %s\n' "${errors[@]}" >&2
    die "${#errors[@]} fragment setting(s) did not survive Kconfig (see above; config: $BUILD/.config)"
  fi
  log "config verified: all settings of $(basename "$FRAGMENT") present"

  # ---- build ---------------------------------------------------------------------------
  log "building vmlinux with $JOBS jobs (log: $LOG)"
  start=$SECONDS
  kmake -j"$JOBS" vmlinux || fail_with_log "kernel build failed"
  log "built in $((SECONDS - start))s"

  # PVH entry = the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18); without it the VMM
  # cannot boot this vmlinux directly.
  readelf -n "$BUILD/vmlinux" | grep -A1 -E '^\s*Xen\s' | grep -cE '0x00000012|PHYS32_ENTRY' >/dev/null ||
    die "$BUILD/vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH set?"

  rm -rf "$RESULT.tmp"
  mkdir -p "$RESULT.tmp"
  cp "$BUILD/vmlinux" "$RESULT.tmp/vmlinux"
  cp "$BUILD/.config" "$RESULT.tmp/config"
  rm -rf "$RESULT"
  mv "$RESULT.tmp" "$RESULT"
  log "cached: $RESULT/vmlinux ($(stat -c %s "$RESULT/vmlinux") bytes)"
  install_result
}

# Everything runs from main(), parsed in full before it starts, so editing this file while a
# build runs cannot change the running build.
main "$@"
exit
