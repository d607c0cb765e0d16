//! virtio-rng: fills device-writable buffers from the host's getrandom(2).
pub mod device;
pub mod event_handler;

pub use device::{Rng, MAX_REQUEST_BYTES, QUEUE_SIZE};
