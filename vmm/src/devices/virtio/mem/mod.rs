//! virtio-mem: memory the host plugs into a running guest (virtio 1.2 §5.15), so a pod's VM can
//! grow when a later container needs more than the VM was booted with; no ACPI needed.
//!
//! The device owns one region of guest physical memory beyond RAM, mapped (lazily, with
//! MAP_NORESERVE) and registered with KVM from boot, but not in the guest's memory map. The host
//! raises `requested_size`; the guest's driver then plugs blocks of the region (PLUG requests)
//! and onlines them. Unplugged blocks are given back to the host (`MADV_DONTNEED`); a guest
//! that touches them anyway (it promised not to: VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) costs host
//! memory the VMM's cgroup bounds, like any guest RAM.
pub mod device;
pub mod event_handler;
pub mod request;
#[cfg(test)]
mod tests;

pub use device::{HotplugRegion, Mem, MemError, BLOCK_SIZE, QUEUE_SIZE};
