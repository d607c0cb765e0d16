# vpod — the two commands a newcomer needs:
#   make demo   install what is needed, build the guest kernel/initramfs and the VMM, boot a microVM
#   make test   install what is needed and run every test (VM tests through the test bed when needed)
SHELL := /bin/bash
CARGO ?= cargo
TESTBED := target/debug/testbed

.PHONY: deps guest kernel initramfs build testbed test lint demo bench bench-testbed bench-boot bench-images bench-pod clean-cache

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
	$(CARGO) build --release -p vpod-vmm -p vpod-cri
	$(CARGO) build --release -p vpod-agent-api --example agentctl

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

bench: bench-testbed bench-boot bench-images bench-pod
