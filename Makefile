# vpod — the two commands a newcomer needs:
#   make demo   install what is needed, build the guest kernel/initramfs and the VMM, boot a microVM
#   make test   install what is needed and run every test (VM tests through the test bed when needed)
SHELL := /bin/bash
CARGO ?= cargo
TESTBED := target/debug/testbed

.PHONY: install deps guest kernel initramfs build testbed test lint demo bench bench-testbed bench-boot bench-images bench-pod bench-cri-containerd soak clean-cache

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
	$(CARGO) build --release -p vpod-vmm -p vpod-cri -p vpod-shim
	$(CARGO) build --release -p vpod-agent-api --example agentctl

# The shim and vpod on PATH, the guest where the shim looks by default; prints the containerd
# runtime snippet and the RuntimeClass to apply.
PREFIX ?= /usr/local
install: build
	install -D -m755 target/release/containerd-shim-vpod-v2 $(PREFIX)/bin/containerd-shim-vpod-v2
	install -D -m755 target/release/vpod $(PREFIX)/bin/vpod
	install -D -m644 target/guest/vmlinux /var/lib/vpod/guest/vmlinux
	install -D -m644 target/guest/initramfs.cpio /var/lib/vpod/guest/initramfs.cpio
	@if [ -e /etc/vpod/shim.toml ]; then echo "keeping /etc/vpod/shim.toml"; \
	else install -D -m644 shim/vpod-shim.toml /etc/vpod/shim.toml; fi
	@echo "--- add to /etc/containerd/config.toml (shim/containerd-vpod.toml):"; cat shim/containerd-vpod.toml
	@echo "--- kubectl apply -f shim/runtimeclass.yaml:"; cat shim/runtimeclass.yaml

test: guest testbed
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

# kill -9 soak (not in CI): SOAK_CYCLES (50) pods, each owner killed at a random moment, leftovers
# counted (processes, taps, mounts, netns, state dirs, disk images); exits 1 when any are left.
soak: build
	$(CARGO) bench -p vpod-benches --bench soak

bench: bench-testbed bench-boot bench-images bench-pod bench-cri-containerd
