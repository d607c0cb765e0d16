//! The virtio-blk device: config space, features, activation and queue processing.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{Request, STATUS_OK};
use super::{QUEUE_SIZE, SECTOR_SHIFT};
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::queue::{mark_broken, pop_chain, resignal, Budget, RingError};

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening disk {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("raising the config-change interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
}

/// The backing file and what the guest sees of it.
#[derive(Debug)]
pub struct DiskFile {
    pub file: File,
    pub path: PathBuf,
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub capacity: u64,
    pub read_only: bool,
    /// GET_ID answer: up to 20 bytes, NUL padded.
    pub id: [u8; 20],
}

impl DiskFile {
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(path.to_path_buf(), e))?;
        let len = file
            .metadata()
            .map_err(|e| BlockError::Open(path.to_path_buf(), e))?
            .len();
        let mut id_bytes = [0u8; 20];
        let src = id.map(str::as_bytes).unwrap_or_default();
        let n = src.len().min(20);
        id_bytes[..n].copy_from_slice(&src[..n]);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity: len >> SECTOR_SHIFT,
            read_only,
            id: id_bytes,
        })
    }
}

pub(super) struct Active {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub queue_evt: EventFd,
    pub interrupt: Arc<Interrupt>,
}

pub struct Block {
    pub(super) disk: DiskFile,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    pub(super) active: Option<Active>,
    /// Signalled on activation and reset: the event loop then (un)registers the queue eventfd.
    pub(super) activate_evt: EventFd,
    /// Queue eventfds of a previous activation, to be removed from epoll by the event loop.
    pub(super) retired_evts: Vec<EventFd>,
    pub(super) registered: bool,
}

impl Block {
    pub fn new(disk: DiskFile) -> Result<Self, BlockError> {
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        if disk.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            disk,
            avail_features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            active: None,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            retired_evts: Vec::new(),
            registered: false,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Whether the device was created read-only (VIRTIO_BLK_F_RO offered).
    pub fn avail_features_read_only(&self) -> bool {
        self.avail_features & (1 << VIRTIO_BLK_F_RO) != 0
    }

    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// Swaps the backing file at runtime (e.g. filling an empty slot). The caller then tells the
    /// driver through the transport (`MmioTransport::notify_config_change`), which re-reads the
    /// capacity. Requests already completed are unaffected; later ones go to the new file.
    pub fn swap_disk(&mut self, disk: DiskFile) -> DiskFile {
        if disk.read_only != self.disk.read_only {
            tracing::warn!(
                "block: swapped disk changes read-only flag; the guest keeps the negotiated one"
            );
        }
        std::mem::replace(&mut self.disk, disk)
    }

    /// Raises the config-change interrupt on its own (for callers without the transport).
    pub fn notify_config_change(&self) -> Result<(), BlockError> {
        match &self.active {
            Some(a) => a
                .interrupt
                .trigger(VIRTIO_MMIO_INT_CONFIG)
                .map_err(BlockError::Interrupt),
            None => Ok(()),
        }
    }

    /// Processes available requests (at most one queue's worth per call: see
    /// `devices::virtio::queue`); raises the used-ring interrupt if the driver wants one. A broken
    /// ring puts the device in DEVICE_NEEDS_RESET and it processes nothing until reset.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
        }
        let mem = &active.mem;
        let disk = &mut self.disk;
        let queue = &mut active.queue;
        let mut budget = Budget::for_queue(queue);
        let mut used_any = false;
        'outer: loop {
            if let Err(e) = queue.disable_notification(mem) {
                mark_broken(
                    &active.interrupt,
                    "block",
                    "request",
                    &RingError::Used(format!("{e:?}")),
                );
                break;
            }
            loop {
                if budget.spent() {
                    // More may be waiting: leave notifications off and come back next turn.
                    resignal(&active.queue_evt, "block");
                    break 'outer;
                }
                let chain = match pop_chain(queue, mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => {
                        mark_broken(&active.interrupt, "block", "request", &e);
                        break 'outer;
                    }
                };
                budget.take();
                let head = chain.head_index();
                let len = match Request::parse(chain, mem, disk.capacity) {
                    Ok(req) => {
                        let (status, written) = match req.execute(disk, mem) {
                            Ok(n) => (STATUS_OK, n),
                            Err(e) => {
                                tracing::debug!("block: request failed: {e}");
                                (e.status(), 0)
                            }
                        };
                        match mem.write_obj(status, req.status) {
                            Ok(()) => written + 1,
                            Err(_) => 0,
                        }
                    }
                    Err((e, status_addr)) => {
                        tracing::debug!("block: bad request: {e}");
                        match status_addr.map(|a| mem.write_obj(e.status(), a)) {
                            Some(Ok(())) => 1,
                            _ => 0,
                        }
                    }
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    mark_broken(
                        &active.interrupt,
                        "block",
                        "request",
                        &RingError::Used(format!("{e:?}")),
                    );
                    break 'outer;
                }
                used_any = true;
            }
            match queue.enable_notification(mem) {
                // Requests arrived while notifications were off: go round (within the budget).
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    mark_broken(
                        &active.interrupt,
                        "block",
                        "request",
                        &RingError::Read(format!("{e:?}")),
                    );
                    break;
                }
            }
        }
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING) {
                tracing::warn!("block: interrupt: {e}");
            }
        }
    }

    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.disk.capacity.to_le_bytes());
        // seg_max: a request is header + status + data descriptors, all in one queue-sized chain.
        c[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 1 || ctx.queue_events.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: ctx.queues.len(),
            });
        }
        let mut queue = ctx.queues.remove(0);
        if !queue.ready() {
            return Err(ActivateError::Backend("request queue not ready".into()));
        }
        queue.set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            queue_evt: ctx.queue_events.remove(0),
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) -> bool {
        if let Some(a) = self.active.take() {
            self.retired_evts.push(a.queue_evt);
            self.acked_features = 0;
            // Let the event loop drop the stale registration.
            let _ = self.activate_evt.write(1);
        }
        true
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
