//! Devices: the buses, legacy PC devices and virtio.
pub mod bus;
pub mod latch;
pub mod legacy;
pub mod virtio;
