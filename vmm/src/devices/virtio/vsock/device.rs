//! The virtio-vsock device: config space, activation and the queue <-> muxer glue.

use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{Header, MAX_PKT_DATA, PKT_HEADER_SIZE};
use super::VsockError;
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::queue::{mark_broken, next_within, Budget, RingError};

pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const EVQ_INDEX: usize = 2;
pub const NUM_QUEUES: usize = 3;
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// State that exists once the driver set DRIVER_OK.
pub(super) struct Active {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
}

pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    pub(super) activate_evt: EventFd,
    /// Set by `activate` (vCPU thread), taken over by the event loop on `activate_evt`.
    pub(super) pending_activation: Option<Active>,
    pub(super) active: Option<Active>,
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
            acked_features: 0,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            pending_activation: None,
            active: None,
            muxer,
            scratch: vec![0u8; MAX_PKT_DATA as usize],
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Open guest <-> host connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Tells the guest about used buffers.
    fn signal_used(active: &Active) {
        if let Err(e) = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING) {
            tracing::error!("vsock: raising interrupt: {e}");
        }
    }

    /// Handles the packets the guest queued on tx (at most one queue's worth per call; then the tx
    /// queue eventfd brings us back on the next loop turn). Returns whether any buffer was used.
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
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
            if let Err(e) = queue.add_used(mem, head, 0) {
                mark_broken(
                    &active.interrupt,
                    "vsock",
                    "tx",
                    &RingError::Used(format!("{e:?}")),
                );
                break;
            }
            used = true;
        }
        // Honours EVENT_IDX suppression if the queue has it enabled (not offered yet).
        if used && queue.needs_notification(mem).unwrap_or(true) {
            Self::signal_used(active);
        }
        used
    }

    /// Fills rx buffers with what the muxer has for the guest (at most one queue's worth per
    /// call; then the rx queue eventfd brings us back). Returns whether any was used.
    pub(super) fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
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
            if let Err(e) = queue.add_used(mem, head, len) {
                mark_broken(
                    &active.interrupt,
                    "vsock",
                    "rx",
                    &RingError::Used(format!("{e:?}")),
                );
                break;
            }
            used = true;
        }
        // Honours EVENT_IDX suppression if the queue has it enabled (not offered yet).
        if used && queue.needs_notification(mem).unwrap_or(true) {
            Self::signal_used(active);
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

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_events.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: ctx.queues.len().min(ctx.queue_events.len()),
            });
        }
        self.pending_activation = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            queue_events: ctx.queue_events,
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some() || self.pending_activation.is_some()
    }
}
