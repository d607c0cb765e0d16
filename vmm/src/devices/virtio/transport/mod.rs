//! Virtio transports. Only virtio-mmio: no PCI in a vpod guest.
pub mod mmio;

pub use mmio::MmioTransport;
