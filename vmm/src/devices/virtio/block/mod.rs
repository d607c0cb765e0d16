//! virtio-blk backed by a host file (sparse files fine), with read-only, flush and GET_ID.
pub mod device;
pub mod event_handler;
pub mod request;

#[cfg(test)]
mod tests;

pub use device::{Block, BlockError, DiskFile, QUEUE_SIZE};
pub use request::{SECTOR_SHIFT, SECTOR_SIZE};
