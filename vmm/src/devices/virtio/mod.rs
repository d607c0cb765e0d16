//! Virtio devices (one folder each, same file names) and the virtio-mmio transport.
pub mod block;
pub mod device;
pub mod mem;
pub mod net;
pub mod queue;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod transport;
pub mod vsock;

pub use device::{ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice};
