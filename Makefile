# vpod — the two commands a newcomer needs:
#   make demo   install what is needed, build the guest kernel/initramfs and the VMM, boot a microVM
#   make test   install what is needed and run every test (VM tests through the test bed when needed)
SHELL := /bin/bash
CARGO ?= cargo
TESTBED := target/debug/testbed

.PHONY: forbidden-syscall-vmm install deps guest kernel initramfs build testbed test lint demo bench bench-testbed bench-boot bench-images bench-pod bench-cri-containerd bench-cri-serve soak clean-cache

deps:
	bash scripts/install-deps.sh

kernel: deps
	bash images/kernel/build.sh

initramfs: deps
	bash guest-init/build-initramfs.sh

guest: kernel initramfs

testbed: deps
	$(CARGO) build -p vpod-testbed --bins
	$(TESTBED) build >/dev/null

build: guest testbed
	$(CARGO) build --release -p vpod-vmm -p vpod-cli -p vpod-shim
	$(CARGO) build --release -p vpod-agent-api --example agentctl

# The shim and vpod on PATH, the guest where the shim looks by default; prints the containerd
# runtime snippet and the RuntimeClass to apply.
PREFIX ?= /usr/local
install: build
	install -D -m755 target/release/containerd-shim-vpod-v2 $(PREFIX)/bin/containerd-shim-vpod-v2
	install -D -m755 target/release/vpod $(PREFIX)/bin/vpod
	install -D -m755 target/release/vpod-vmm $(PREFIX)/bin/vpod-vmm
	install -D -m644 target/guest/vmlinux /var/lib/vpod/guest/vmlinux
	install -D -m644 target/guest/initramfs.cpio /var/lib/vpod/guest/initramfs.cpio
	@if [ -e /etc/vpod/shim.toml ]; then echo "keeping /etc/vpod/shim.toml"; \
	else install -D -m644 shim/vpod-shim.toml /etc/vpod/shim.toml; fi
	@echo "--- add to /etc/containerd/config.toml (shim/containerd-vpod.toml):"; cat shim/containerd-vpod.toml
	@echo "--- kubectl apply -f shim/runtimeclass.yaml:"; cat shim/runtimeclass.yaml

# The test-only VMM (feature forbidden-syscall-test: a syscall off its seccomp lists when asked
# for metrics), in its own target dir so no other build ever links the feature in.
forbidden-syscall-vmm:
	$(CARGO) build -p vpod-vmm --bin vpod-vmm --features forbidden-syscall-test --target-dir target/forbidden-syscall

test: guest testbed forbidden-syscall-vmm
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: build
	$(TESTBED) run --if-needed --share $(CURDIR) -- bash scripts/demo.sh

bench-testbed: testbed
	$(CARGO) bench -p vpod-benches --bench testbed

bench-boot: build
	$(CARGO) bench -p vpod-benches --bench boot

bench-images: deps
	$(CARGO) bench -p vpod-benches --bench images

bench-pod: build
	$(CARGO) bench -p vpod-benches --bench pod

# RunPodSandbox -> first output through containerd's CRI plugin, vpod vs runc.
bench-cri-containerd: build
	$(CARGO) bench -p vpod-benches --bench cri_containerd

# vpod serve vs containerd+vpod vs containerd+runc, alternating (BENCH_RUNS pods each).
bench-cri-serve: build
	$(CARGO) bench -p vpod-benches --bench cri_serve

# kill -9 soak (not in CI): SOAK_CYCLES (50) pods, each owner killed at a random moment, leftovers
# counted (processes, taps, mounts, netns, state dirs, disk images); exits 1 when any are left.
soak: build
	$(CARGO) bench -p vpod-benches --bench soak

bench: bench-testbed bench-boot bench-images bench-pod bench-cri-containerd bench-cri-serve

# Fuzzing (fuzz/: cargo-fuzz targets, libFuzzer; fuzz/README.md). `make fuzz` runs each target
# for FUZZ_SECONDS, `make fuzz-smoke` (CI) for FUZZ_SMOKE_SECONDS; either fails if any target
# finds a crash or a hang (-timeout: one input taking longer than FUZZ_TIMEOUT s). New inputs go
# to target/fuzz-corpus/<t> (the repo's seeds in fuzz/corpus/<t> are only read), findings to
# fuzz/artifacts/<t>/, each target's log to target/fuzz-logs/<t>.log.
FUZZ_TARGETS ?= mmio block net vsock rng mem oci unpack
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_TIMEOUT ?= 10
# nightly when rustup has it, else stable rustc taking cargo-fuzz's -Z flags (RUSTC_BOOTSTRAP).
FUZZ_CARGO := $(shell rustup run nightly rustc --version >/dev/null 2>&1 && echo "cargo +nightly" || echo "env RUSTC_BOOTSTRAP=1 cargo")
# Release build with debug assertions (overflow checks), AddressSanitizer (cargo-fuzz's default).
FUZZ_BUILD_FLAGS ?= -O -a
# Outside the tree, so that a fresh clone on the same machine (CI's) reuses the instrumented
# dependencies (a cold build of them takes 10+ minutes on 2 cores).
FUZZ_TARGET_DIR ?= $(HOME)/.cache/vpod/fuzz-target
FUZZ_ENV := CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR)

fuzz-build:
	bash scripts/install-fuzz.sh
	cd fuzz && $(FUZZ_ENV) $(FUZZ_CARGO) fuzz build $(FUZZ_BUILD_FLAGS)

define fuzz_run
	@mkdir -p target/fuzz-logs; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  log=target/fuzz-logs/$$t.log; \
	  if (cd fuzz && $(FUZZ_ENV) $(FUZZ_CARGO) fuzz run $(FUZZ_BUILD_FLAGS) $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
	      -max_total_time=$(1) -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=2048 -print_final_stats=1) >$$log 2>&1; then \
	    echo "fuzz $$t: ok, $$(grep -o 'stat::number_of_executed_units: *[0-9]*' $$log | grep -o '[0-9]*$$') execs in $(1) s, $$(grep -o 'cov: [0-9]*' $$log | tail -1)"; \
	  else \
	    echo "fuzz $$t: FAILED (log $$log, inputs in fuzz/artifacts/$$t/)"; tail -40 $$log; failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failing targets:$$failed"; exit 1; fi
endef

fuzz: fuzz-build
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-smoke: fuzz-build
	$(call fuzz_run,$(FUZZ_SMOKE_SECONDS))
