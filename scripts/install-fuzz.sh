#!/usr/bin/env bash
# Installs cargo-fuzz (from crates.io) if it is missing. Idempotent and fast when present.
#
# The fuzz targets build with a nightly toolchain when rustup has one (`cargo +nightly fuzz`); a
# machine with only the stable toolchain (no other toolchain can be fetched there) builds them with
# RUSTC_BOOTSTRAP=1 instead, which lets stable rustc take the -Z flags cargo-fuzz passes. The
# Makefile's fuzz targets make the same choice (FUZZ_CARGO).
set -euo pipefail

if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi

if cargo fuzz --version >/dev/null 2>&1; then
    exit 0
fi
echo "install-fuzz: installing cargo-fuzz from crates.io" >&2
"${cargo[@]}" install cargo-fuzz --locked
cargo fuzz --version >&2
