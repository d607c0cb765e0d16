//! virtio-blk backed by a host file (sparse files fine), with read-only, flush and GET_ID.
pub mod device;
pub mod event_handler;
pub mod request;

#[cfg(test)]
mod tests;

pub use device::{Block, BlockError, DiskFile};

/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// virtio-blk's sector: 512 bytes, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
