//! virtio-rng: fills device-writable buffers from the host's getrandom(2).
pub mod device;
pub mod event_handler;

pub use device::Rng;

/// The request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes handed out per request at most: bounds the work one guest notification can cause.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
