//! vpod-vmm: a KVM microVM monitor built on rust-vmm crates. It boots an uncompressed PVH vmlinux
//! with an initramfs, a COM1 serial console, and virtio-mmio devices (block, net, vsock, rng).
//!
//! ```no_run
//! use vpod_vmm::{Vmm, VmConfig, VmExit};
//! let mut config = VmConfig::new("/path/vmlinux");
//! config.initrd = Some("/path/initramfs.cpio".into());
//! let vm = Vmm::start(config).unwrap();
//! match vm.wait() {
//!     VmExit::Poweroff => {}
//!     other => eprintln!("guest ended: {other:?}"),
//! }
//! ```
//!
//! Data flows one way: [`VmConfig`] -> [`builder::build`] -> [`RunningVm`] -> [`VmExit`].
//!
//! - [`config`]: what a VM is made of; [`builder`]: config -> wired VM, in one pass ([`Vmm`]).
//! - [`arch`]: x86_64 boot (PVH, MP table, CPUID, MSRs, registers, memory layout).
//! - [`vstate`]: the KVM VM, its vCPU threads and guest memory.
//! - [`devices`]: the buses, legacy PC devices, virtio devices and their virtio-mmio transport.
//! - [`event_loop`]: the thread that runs every device's queues.
//! - [`host_files`]: what a VM opens on the host, in one place (before a jail);
//!   [`control`]: the channel between a host and a `vpod-vmm` process per pod.
//! - [`running`]: a started VM, its teardown and the embedder's handle; [`exit`]: how it ended;
//!   [`metrics`]: what it counted.

#![warn(missing_docs)]

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod host_files;
pub mod metrics;
pub mod running;
pub mod threads;
pub mod vstate;

pub use builder::{BuildError, StartOptions, Vmm};
pub use config::{Console, DiskConfig, NetConfig, VmConfig, VsockConfig};
pub use exit::VmExit;
pub use host_files::HostFiles;
pub use metrics::VmMetrics;
pub use running::{HotplugState, RunningVm, StopHandle, VmOpError, TEARDOWN_TIMEOUT};
pub use threads::{ThreadFilters, THREAD_STACK_SIZE};
