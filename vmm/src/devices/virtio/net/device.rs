//! The virtio-net device: features, config space (MAC), activation and the queue <-> tap loops.

use std::io;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};

use super::packet::{read_tx_chain, write_rx_chain, FrameError};
use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use crate::devices::virtio::device::{
    lifecycle_field, ActivateContext, ActivateError, Lifecycle, VirtioDevice,
};
use crate::devices::virtio::queue::{
    add_used, mark_broken, next_within, pop_chain, resignal, Budget,
};

/// The receive queue's index (frames to the guest).
pub const RXQ_INDEX: usize = 0;
/// The transmit queue's index (frames from the guest).
pub const TXQ_INDEX: usize = 1;
/// How many queues the device has.
pub const NUM_QUEUES: usize = 2;
/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// Largest frame (with its virtio-net header) either way: a 64 KiB TSO frame plus headers.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;

/// Frame counters (what the device did with guest and tap traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (with the virtio-net header).
    pub rx_bytes: u64,
    /// Frames from the tap that no rx chain could take (too big) and bad rx chains.
    pub rx_dropped: u64,
    /// Frames the guest sent that the tap took.
    pub tx_frames: u64,
    /// Their bytes (with the virtio-net header).
    pub tx_bytes: u64,
    /// Bad tx chains and frames the tap refused.
    pub tx_dropped: u64,
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening or setting up the tap.
    #[error("tap: {0}")]
    Tap(#[from] TapError),
    /// Creating the device's activate eventfd.
    #[error("creating net eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-net device on a tap.
pub struct Net {
    pub(super) tap: Tap,
    mac: Option<[u8; 6]>,
    /// Config space: `struct virtio_net_config` starts with mac[6]; nothing else is offered.
    config: [u8; 6],
    avail_features: u64,
    pub(super) lifecycle: Lifecycle,
    /// A frame read from the tap, waiting for an rx chain (its length in `rx_buf`).
    rx_pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Whether the tap fd is registered for EPOLLIN (off while a frame waits for rx buffers).
    pub(super) tap_rx_armed: bool,
    stats: NetStats,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name())
            .field("mac", &self.mac)
            .field("activated", &self.is_activated())
            .finish()
    }
}

impl Net {
    /// A virtio-net device on the tap interface `tap_name` (created if it doesn't exist, which
    /// needs CAP_NET_ADMIN). With `mac`, the guest's NIC gets that address (VIRTIO_NET_F_MAC).
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        Self::with_tap(Tap::open(tap_name)?, mac)
    }

    /// A device on a tap opened already (a jailed VMM opens it before it enters its jail).
    pub fn with_tap(tap: Tap, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6);
        if mac.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MAC;
        }
        Ok(Self {
            tap,
            mac,
            config: mac.unwrap_or_default(),
            avail_features,
            lifecycle: Lifecycle::new().map_err(NetError::EventFd)?,
            rx_pending: None,
            rx_buf: vec![0u8; MAX_FRAME_LEN],
            tx_buf: vec![0u8; MAX_FRAME_LEN],
            tap_rx_armed: false,
            stats: NetStats::default(),
        })
    }

    /// The tap interface's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// What the device did with frames so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn acked(&self, bit: u32) -> bool {
        self.lifecycle.has_feature(bit)
    }

    /// The tap offloads matching what the guest accepted to receive.
    fn tap_offload_flags(&self) -> u32 {
        let mut flags = 0;
        if self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            // Segmentation offload is only meaningful with checksum offload.
            if self.acked(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if self.acked(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
        }
        flags
    }

    /// Whether the tap should be watched for frames (not while one waits for rx buffers, nor
    /// once the device needs a reset: nothing would read the tap and EPOLLIN would spin).
    pub(super) fn wants_tap_rx(&self) -> bool {
        self.rx_pending.is_none()
            && !self
                .lifecycle
                .active()
                .is_some_and(|a| a.interrupt.needs_reset())
    }

    /// Moves frames from the tap into rx chains until the tap is empty or the guest has no
    /// buffers left (then the pending frame waits for the rx queue's kick). At most one queue's
    /// worth per call; then the rx queue eventfd brings us back on the next loop turn.
    pub(super) fn process_rx(&mut self) {
        let Some(active) = self.lifecycle.active_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let mut budget = Budget::for_queue(queue);
        let mut used = false;
        loop {
            // Counts tap reads too: a flood of runt frames is bounded the same way.
            if !budget.take() {
                resignal(&active.queue_events[RXQ_INDEX], "net");
                break;
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(len) if len < VNET_HDR_LEN => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(len) => {
                        // virtio 1.x: num_buffers is 1 without MRG_RXBUF; the tap leaves it alone.
                        self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(tap = self.tap.name(), "net: tap read: {e}");
                        break;
                    }
                },
            };
            let mut chain = match pop_chain(queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    mark_broken(&active.interrupt, "net", "rx", &e);
                    break;
                }
            };
            let head = chain.head_index();
            let used_len = match write_rx_chain(&mut chain, mem, &self.rx_buf[..len]) {
                Ok(n) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += n as u64;
                    self.rx_pending = None;
                    n as u32
                }
                Err(e @ FrameError::RxTooSmall { .. }) => {
                    // The guest's buffers can't hold this frame: drop the frame, not the device.
                    tracing::debug!("net: dropping rx frame: {e}");
                    self.stats.rx_dropped += 1;
                    self.rx_pending = None;
                    0
                }
                Err(e) => {
                    // A bad chain: return it unused and try the frame on the next one.
                    tracing::debug!("net: bad rx chain: {e}");
                    self.stats.rx_dropped += 1;
                    0
                }
            };
            if !add_used(queue, mem, head, used_len, &active.interrupt, "net", "rx") {
                break;
            }
            used = true;
        }
        if used {
            active.notify_used(RXQ_INDEX, "net");
        }
    }

    /// Sends the frames the guest queued on tx to the tap (at most one queue's worth per call;
    /// then the tx queue eventfd brings us back on the next loop turn).
    pub(super) fn process_tx(&mut self) {
        let Some(active) = self.lifecycle.active_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
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
            "net",
            "tx",
        ) {
            let head = chain.head_index();
            match read_tx_chain(&mut chain, mem, &mut self.tx_buf) {
                Ok(len) => match self.tap.write_frame(&self.tx_buf[..len]) {
                    Ok(_) => {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += len as u64;
                    }
                    Err(e) => {
                        // Link down (EIO), a header the kernel rejects (EINVAL), a full queue.
                        tracing::debug!(tap = self.tap.name(), "net: tap write: {e}");
                        self.stats.tx_dropped += 1;
                    }
                },
                Err(e) => {
                    tracing::debug!("net: dropping bad tx chain: {e}");
                    self.stats.tx_dropped += 1;
                }
            }
            if !add_used(queue, mem, head, 0, &active.interrupt, "net", "tx") {
                break;
            }
            used = true;
        }
        if used {
            active.notify_used(TXQ_INDEX, "net");
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    lifecycle_field!();

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn prepare_activation(&mut self, _ctx: &mut ActivateContext) -> Result<(), ActivateError> {
        self.tap
            .set_offload(self.tap_offload_flags())
            .map_err(|e| ActivateError::Backend(e.to_string()))
    }
}
