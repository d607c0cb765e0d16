//! The virtio-vsock device: config space, activation and the queue <-> muxer glue.

use std::path::{Path, PathBuf};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::QueueOwnedT;
use virtio_vsock::packet::VsockPacket;

use super::muxer::Muxer;
use super::packet::{Header, MAX_PKT_DATA, PKT_HEADER_SIZE};
use crate::devices::virtio::device::{lifecycle_field, Lifecycle, VirtioDevice};
use crate::devices::virtio::queue::{add_used, next_within, Budget};

/// The receive queue's index (packets to the guest).
pub const RXQ_INDEX: usize = 0;
/// The transmit queue's index (packets from the guest).
pub const TXQ_INDEX: usize = 1;
/// The event queue's index (TRANSPORT_RESET, never sent).
pub const EVQ_INDEX: usize = 2;
/// How many queues the device has.
pub const NUM_QUEUES: usize = 3;
/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A reserved or out-of-range guest CID.
    #[error("invalid guest CID {0} (must be 3..=4294967294)")]
    InvalidCid(u64),
    /// Creating the host side's unix socket.
    #[error("binding vsock unix socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// bind's error.
        #[source]
        source: std::io::Error,
    },
    /// Creating the device's activate eventfd.
    #[error("creating vsock eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-vsock device whose host side is unix sockets.
pub struct Vsock {
    guest_cid: u64,
    /// Config space: `struct virtio_vsock_config { le64 guest_cid; }`.
    config: [u8; 8],
    pub(super) lifecycle: Lifecycle,
    pub(super) muxer: Muxer,
    /// Bounce buffer for one packet's payload.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.muxer.uds_path())
            .field("activated", &self.is_activated())
            .finish()
    }
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, host side on the unix socket `uds_path`
    /// (created now, removed on drop). Guest connections to host port P go to `<uds_path>_P`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        // CIDs 0-2 are reserved; Linux CIDs are 32 bits and u32::MAX is VMADDR_CID_ANY.
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let muxer = Muxer::new(guest_cid, uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            guest_cid,
            config: guest_cid.to_le_bytes(),
            lifecycle: Lifecycle::new().map_err(VsockError::EventFd)?,
            muxer,
            scratch: vec![0u8; MAX_PKT_DATA as usize],
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host side's unix socket.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Open guest <-> host connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Handles the packets the guest queued on tx (at most one queue's worth per call; then the tx
    /// queue eventfd brings us back on the next loop turn). Returns whether any buffer was used.
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(active) = self.lifecycle.active_mut() else {
            return false;
        };
        if active.interrupt.needs_reset() {
            return false;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ_INDEX];
        let mut budget = Budget::for_queue(queue);
        let mut used = false;
        while let Some(mut chain) = next_within(
            queue,
            mem,
            &mut budget,
            &active.queue_events[TXQ_INDEX],
            &active.interrupt,
            "vsock",
            "tx",
        ) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::from_packet(&pkt);
                    let n = match pkt.data_slice() {
                        Some(slice) => slice.copy_to(&mut self.scratch[..]),
                        None => 0,
                    };
                    self.muxer.handle_guest_pkt(&hdr, &self.scratch[..n]);
                }
                Err(e) => tracing::debug!("vsock: dropping bad tx chain: {e}"),
            }
            if !add_used(queue, mem, head, 0, &active.interrupt, "vsock", "tx") {
                break;
            }
            used = true;
        }
        if used {
            active.notify_used(TXQ_INDEX, "vsock");
        }
        used
    }

    /// Fills rx buffers with what the muxer has for the guest (at most one queue's worth per
    /// call; then the rx queue eventfd brings us back). Returns whether any was used.
    pub(super) fn process_rx(&mut self) -> bool {
        let Some(active) = self.lifecycle.active_mut() else {
            return false;
        };
        if active.interrupt.needs_reset() {
            return false;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let mut budget = Budget::for_queue(queue);
        let mut used = false;
        while self.muxer.has_rx() {
            // None: no buffers (the guest's next rx kick brings us back), budget spent or ring broken.
            let Some(mut chain) = next_within(
                queue,
                mem,
                &mut budget,
                &active.queue_events[RXQ_INDEX],
                &active.interrupt,
                "vsock",
                "rx",
            ) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let cap = pkt.data_slice().map_or(0, |s| s.len());
                    let cap = cap.min(self.scratch.len());
                    match self.muxer.next_rx(&mut self.scratch[..cap]) {
                        Some((mut hdr, n)) => {
                            hdr.len = n as u32;
                            hdr.write_to(&mut pkt);
                            if let Some(slice) = pkt.data_slice() {
                                slice.copy_from(&self.scratch[..n]);
                            }
                            (PKT_HEADER_SIZE + n) as u32
                        }
                        None if cap == 0 => {
                            // A buffer with no room for data (Linux never posts one) while a
                            // connection only has data: unusable, return it empty (as a bad
                            // chain) so that the guest's next buffers get the data.
                            tracing::debug!("vsock: dropping rx chain without data room");
                            0
                        }
                        None => {
                            // Nothing to send after all: give the buffer back.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: dropping bad rx chain: {e}");
                    0
                }
            };
            if !add_used(queue, mem, head, len, &active.interrupt, "vsock", "rx") {
                break;
            }
            used = true;
        }
        if used {
            active.notify_used(RXQ_INDEX, "vsock");
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    lifecycle_field!();

    fn config_space(&self) -> &[u8] {
        &self.config
    }
}
