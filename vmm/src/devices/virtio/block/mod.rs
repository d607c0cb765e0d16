//! virtio-blk backed by a host file (sparse files fine), with read-only, flush and GET_ID.
pub mod device;
pub mod event_handler;
pub mod request;

#[cfg(test)]
mod tests;

pub use device::{Block, BlockError, DiskFile};

/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
