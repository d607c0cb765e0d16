//! virtio-net over a tap device.
//!
//! The tap is opened with IFF_VNET_HDR and a 12-byte header (`virtio_net_hdr_v1`), so frames and
//! their offload metadata pass between the guest's queues and the tap unchanged: tx chains are
//! gathered and written to the tap, frames read from the tap are scattered into rx chains. The
//! offloads the guest accepts for receiving (GUEST_CSUM/TSO) are what we let the kernel hand us
//! (TUNSETOFFLOAD); the ones for sending (CSUM/HOST_TSO) the tap always takes.
//!
//! Files: `device.rs` (virtio device, queues), `event_handler.rs` (event loop), `packet.rs`
//! (chain <-> buffer with validation), `tap.rs` (the tap fd).

mod device;
mod event_handler;
mod packet;
pub mod tap;

#[cfg(test)]
mod tests;

pub use device::{Net, NetError, NetStats, NUM_QUEUES, QUEUE_SIZE};
pub use tap::{Tap, TapError, VNET_HDR_LEN};
