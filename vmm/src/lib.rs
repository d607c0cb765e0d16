//! vpod-vmm: a KVM microVM monitor built on rust-vmm crates.
pub mod devices;
