//! The virtio-blk device: config space, features, activation and queue processing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::request::{Request, SECTOR_SHIFT, STATUS_OK};
use crate::devices::virtio::device::{
    lifecycle_field, ActivateContext, ActivateError, Lifecycle, VirtioDevice,
    VIRTIO_MMIO_INT_CONFIG,
};
use crate::devices::virtio::queue::{
    add_used, mark_broken, pop_chain, resignal, Budget, RingError,
};

/// The request queue's index.
pub(super) const REQUEST_QUEUE: usize = 0;
/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of `struct virtio_blk_config` we fill: capacity (0..8), size_max (8..12), seg_max
/// (12..16), geometry (16..20), blk_size (20..24).
const CONFIG_LEN: usize = 24;

/// Why a block device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening or inspecting the backing file.
    #[error("opening disk {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
    /// Creating the device's activate eventfd.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Telling the guest the config changed.
    #[error("raising the config-change interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
}

/// The backing file and what the guest sees of it.
#[derive(Debug)]
pub struct DiskFile {
    /// The open file (read-write unless `read_only`).
    pub file: File,
    /// Where it was opened from (for logs and the embedder).
    pub path: PathBuf,
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub capacity: u64,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// GET_ID answer: up to 20 bytes, NUL padded.
    pub id: [u8; 20],
}

impl DiskFile {
    /// Opens `path` (read-only if `read_only`); `id` (first 20 bytes) answers GET_ID.
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(path.to_path_buf(), e))?;
        Self::from_file(file, path, read_only, id)
    }

    /// A disk on a file opened already (`path` only names it in errors and logs); a writable disk
    /// needs a file opened for writing.
    pub fn from_file(
        file: File,
        path: &Path,
        read_only: bool,
        id: Option<&str>,
    ) -> Result<Self, BlockError> {
        let open_err = |e| BlockError::Open(path.to_path_buf(), e);
        // SAFETY: F_GETFL on an fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(open_err(std::io::Error::last_os_error()));
        }
        if !read_only && flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(open_err(std::io::Error::other(
                "a writable disk on a file opened read-only",
            )));
        }
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(open_err(std::io::Error::other(
                "not a regular file or block device",
            )));
        }
        let len = meta.len();
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

/// A virtio-blk device on one backing file.
#[derive(Debug)]
pub struct Block {
    pub(super) disk: DiskFile,
    avail_features: u64,
    queue_sizes: [u16; 1],
    /// Config space as the guest reads it (follows the disk: see `swap_disk`).
    config: [u8; CONFIG_LEN],
    pub(super) lifecycle: Lifecycle,
}

impl Block {
    /// A device on `disk` (VIRTIO_BLK_F_RO offered if it is read-only).
    pub fn new(disk: DiskFile) -> Result<Self, BlockError> {
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        if disk.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let config = config_bytes(&disk);
        Ok(Self {
            disk,
            avail_features,
            queue_sizes: [QUEUE_SIZE],
            config,
            lifecycle: Lifecycle::new().map_err(BlockError::EventFd)?,
        })
    }

    /// Capacity in 512-byte sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Whether the device was created read-only (VIRTIO_BLK_F_RO offered).
    pub fn avail_features_read_only(&self) -> bool {
        self.avail_features & (1 << VIRTIO_BLK_F_RO) != 0
    }

    /// The backing file's path.
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
        self.config = config_bytes(&disk);
        std::mem::replace(&mut self.disk, disk)
    }

    /// Raises the config-change interrupt on its own (for callers without the transport).
    pub fn notify_config_change(&self) -> Result<(), BlockError> {
        match self.lifecycle.active() {
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
        let Some(active) = self.lifecycle.active_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
        }
        let mem = &active.mem;
        let disk = &mut self.disk;
        let queue = &mut active.queues[REQUEST_QUEUE];
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
                    resignal(&active.queue_events[REQUEST_QUEUE], "block");
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
                if !add_used(queue, mem, head, len, &active.interrupt, "block", "request") {
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
        if used_any {
            active.notify_used(REQUEST_QUEUE, "block");
        }
    }
}

/// The config space for `disk`: its capacity and our seg_max.
fn config_bytes(disk: &DiskFile) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..8].copy_from_slice(&disk.capacity.to_le_bytes());
    // seg_max: a request is header + status + data descriptors, all in one queue-sized chain.
    c[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
    c
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

    lifecycle_field!();

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn prepare_activation(&mut self, ctx: &mut ActivateContext) -> Result<(), ActivateError> {
        let queue = &mut ctx.queues[REQUEST_QUEUE];
        if !queue.ready() {
            return Err(ActivateError::Backend("request queue not ready".into()));
        }
        queue.set_event_idx(self.lifecycle.has_feature(VIRTIO_RING_F_EVENT_IDX));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.lifecycle.reset();
        true
    }
}
