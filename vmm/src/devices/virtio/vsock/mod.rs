//! virtio-vsock in userspace, host side on unix sockets (Firecracker's protocol).
//!
//! - A host process connects to the unix socket `uds_path` and writes `CONNECT <port>\n`; the
//!   device opens a stream to the guest's `<port>` and answers `OK <local_port>\n` once the guest
//!   accepted (or closes the stream if the guest refused). Then bytes flow both ways.
//! - A guest connecting to host port P is joined to the unix socket `<uds_path>_P`.
//!
//! Files: `device.rs` (virtio device, queues), `event_handler.rs` (event loop), `packet.rs`
//! (headers; chain parsing is `virtio_vsock::packet`), `muxer.rs` (routing, listener, epoll),
//! `connection.rs` (per-connection state machine and credit flow control), `unix.rs`.

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
mod unix;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError, NUM_QUEUES, QUEUE_SIZE};
