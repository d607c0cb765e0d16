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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::request::RequestError;
    use crate::devices::virtio::queue::tests::within;
    use std::io::Write;
    use std::time::Duration;
    use virtio_bindings::virtio_blk::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    const MEM_SIZE: usize = 0x40_0000;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    struct Harness {
        mem: GuestMemory,
        disk_file: vmm_sys_util::tempfile::TempFile,
    }

    fn harness(sectors: u64) -> Harness {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let disk_file = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let mut content = Vec::new();
        for i in 0..sectors * 512 {
            content.push((i % 251) as u8);
        }
        disk_file.as_file().write_all(&content).unwrap();
        Harness { mem, disk_file }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn header(mem: &GuestMemory, t: u32, sector: u64) {
        mem.write_obj(t, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    /// Runs one chain through a fresh device; returns (used len, status byte, device).
    fn run(h: &Harness, read_only: bool, descs: &[RawDescriptor]) -> (u32, u8, Block) {
        let vq = MockSplitQueue::new(&h.mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let disk = DiskFile::open(h.disk_file.as_path(), read_only, Some("vpod-disk-0")).unwrap();
        let mut dev = Block::new(disk).unwrap();
        h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        dev.activate(ActivateContext {
            mem: h.mem.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(irq)),
        })
        .unwrap();
        dev.process_queue();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(vq.used().idx().load(), 1, "exactly one chain completed");
        let status: u8 = h.mem.read_obj(GuestAddress(STATUS)).unwrap();
        let irq_status = dev.active.as_ref().unwrap().interrupt.status();
        assert_eq!(irq_status & VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_INT_VRING);
        (used.len(), status, dev)
    }

    #[test]
    fn read_write_roundtrip() {
        let h = harness(8);
        header(&h.mem, VIRTIO_BLK_T_IN, 1);
        let (len, status, _) = run(
            &h,
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 1024, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!((len, status), (1025, VIRTIO_BLK_S_OK as u8));
        let mut buf = [0u8; 4];
        h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert_eq!(
            buf,
            [
                (512 % 251) as u8,
                (513 % 251) as u8,
                (514 % 251) as u8,
                (515 % 251) as u8
            ]
        );

        h.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        header(&h.mem, VIRTIO_BLK_T_OUT, 7);
        let (len, status, _) = run(
            &h,
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let content = std::fs::read(h.disk_file.as_path()).unwrap();
        assert!(content[7 * 512..8 * 512].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn flush_get_id_and_config() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_FLUSH, 0);
        let (len, status, dev) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4);
        let mut past = [0xffu8; 4];
        dev.read_config(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);

        header(&h.mem, VIRTIO_BLK_T_GET_ID, 0);
        let (len, status, _) = run(
            &h,
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 20, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
        let mut id = [0u8; 20];
        h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..11], b"vpod-disk-0");
        assert_eq!(id[11], 0);
    }

    #[test]
    fn read_only_disk() {
        let h = harness(4);
        let disk = DiskFile::open(h.disk_file.as_path(), true, None).unwrap();
        assert_ne!(
            Block::new(disk).unwrap().avail_features() & (1 << VIRTIO_BLK_F_RO),
            0
        );
        header(&h.mem, VIRTIO_BLK_T_OUT, 0);
        let (len, status, _) = run(
            &h,
            true,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        let content = std::fs::read(h.disk_file.as_path()).unwrap();
        assert_eq!(content[1], 1, "disk untouched");
    }

    fn expect_ioerr(h: &Harness, descs: &[RawDescriptor]) {
        let (len, status, _) = run(h, false, descs);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
    }

    #[test]
    fn bad_chains_fail_the_request_only() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_IN, 0);
        // Data past the end of guest memory.
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(MEM_SIZE as u64 - 256, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Address wrapping around u64.
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(u64::MAX - 10, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Read request into a device-readable buffer (wrong direction).
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Sector range past the disk.
        header(&h.mem, VIRTIO_BLK_T_IN, 3);
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 1024, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        header(&h.mem, VIRTIO_BLK_T_IN, u64::MAX);
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Unaligned length.
        header(&h.mem, VIRTIO_BLK_T_IN, 0);
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 100, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Write request from a device-writable buffer.
        header(&h.mem, VIRTIO_BLK_T_OUT, 0);
        expect_ioerr(
            &h,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Header device-writable, or the wrong size.
        expect_ioerr(
            &h,
            &[desc(HDR, 16, NEXT | WRITE, 1), desc(STATUS, 1, WRITE, 0)],
        );
        expect_ioerr(&h, &[desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)]);
        // Header outside memory.
        expect_ioerr(
            &h,
            &[
                desc(MEM_SIZE as u64 - 8, 16, NEXT, 1),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        // Unsupported type.
        header(&h.mem, 0x1234, 0);
        let (len, status, _) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP as u8));
    }

    #[test]
    fn unusable_status_drops_the_request() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_IN, 0);
        // Status descriptor device-readable: nothing written, used len 0.
        let (len, status, _) = run(
            &h,
            false,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, 0, 0),
            ],
        );
        assert_eq!((len, status), (0, 0xff));
        // Status outside guest memory.
        let (len, _, _) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(MEM_SIZE as u64, 1, WRITE, 0)],
        );
        assert_eq!(len, 0);
        // Header only.
        let (len, _, _) = run(&h, false, &[desc(HDR, 16, 0, 0)]);
        assert_eq!(len, 0);
    }

    #[test]
    fn loops_and_overlong_chains() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ... : bounded by the queue size, then rejected.
        let (len, status, _) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, NEXT | WRITE, 0)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        // `next` outside the descriptor table.
        let (len, _, _) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, NEXT | WRITE, 999)],
        );
        assert_eq!(len, 1);
        // A chain of 16 (the queue size) descriptors where the last still has NEXT set.
        let mut descs: Vec<_> = (0..15)
            .map(|i| desc(DATA + i * 512, 512, NEXT | WRITE, i as u16 + 1))
            .collect();
        descs.insert(0, desc(HDR, 16, NEXT, 1));
        let descs: Vec<_> = descs
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(d);
                desc(d.addr().0, d.len(), d.flags(), (i as u16 + 1) % 16)
            })
            .collect();
        let (_, status, _) = run(&h, false, &descs);
        assert_eq!(status, 0xff, "status descriptor never identified");
    }

    #[test]
    fn parse_reports_errors() {
        let h = harness(2);
        header(&h.mem, VIRTIO_BLK_T_IN, 0);
        let chain = [
            SplitDescriptor::new(HDR, 16, NEXT, 1),
            SplitDescriptor::new(DATA, 512, NEXT, 2),
            SplitDescriptor::new(STATUS, 1, WRITE, 0),
        ];
        let e = Request::parse(chain.into_iter(), &h.mem, 2).unwrap_err();
        assert_eq!(
            e,
            (RequestError::WrongDirection, Some(GuestAddress(STATUS)))
        );
        assert_eq!(
            Request::parse(std::iter::empty(), &h.mem, 2).unwrap_err().0,
            RequestError::Empty
        );
        assert!(h.mem.check_range(GuestAddress(STATUS), 1));
    }

    /// A device on `queue` in `mem`; returns it with its queue eventfd and interrupt.
    fn activate_on(
        h: &Harness,
        mem: &GuestMemory,
        queue: Queue,
    ) -> (Block, EventFd, Arc<Interrupt>) {
        let disk = DiskFile::open(h.disk_file.as_path(), false, None).unwrap();
        let mut dev = Block::new(disk).unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            queue_events: vec![evt.try_clone().unwrap()],
            interrupt: irq.clone(),
        })
        .unwrap();
        (dev, evt, irq)
    }

    #[test]
    fn avail_idx_beyond_the_queue_size_needs_reset_instead_of_spinning() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_FLUSH, 0);
        let vq = MockSplitQueue::new(&h.mem, 16);
        vq.add_desc_chains(&[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)], 0)
            .unwrap();
        // 17 requests "available" on a 16-entry queue.
        vq.avail().idx().store(17);
        let (dev, _evt, irq) = activate_on(&h, &h.mem, vq.create_queue::<Queue>().unwrap());
        let mut dev = within(Duration::from_secs(5), move || {
            let mut dev = dev;
            dev.process_queue();
            dev
        });
        assert!(irq.needs_reset(), "DEVICE_NEEDS_RESET flagged");
        assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0, "config interrupt");
        assert_eq!(vq.used().idx().load(), 0, "nothing processed");
        // A broken device stays stopped until the driver resets it.
        vq.avail().idx().store(1);
        dev.process_queue();
        assert_eq!(vq.used().idx().load(), 0);
    }

    #[test]
    fn a_busy_guest_gets_one_queue_worth_per_event() {
        use crate::devices::virtio::vsock::test_utils::Guest;
        use std::sync::atomic::{AtomicBool, Ordering};
        let h = harness(4);
        let (mut guest, mut queues) = Guest::new(1, 16);
        let hdr = guest.alloc(16);
        guest.mem.write_obj(0x1234u32, GuestAddress(hdr)).unwrap(); // unsupported: cheap
        for _ in 0..16 {
            let status = guest.alloc(1);
            guest.add_chain(0, &[(hdr, 16, false), (status, 1, true)]);
        }
        let mem = guest.mem.clone();
        let (dev, evt, _irq) = activate_on(&h, &mem, queues.remove(0));
        // The guest recycles every completed request at once, on another vCPU.
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let driver = std::thread::spawn(move || {
            let mut completed = 0usize;
            while !stop2.load(Ordering::SeqCst) {
                for (head, _) in guest.take_used(0) {
                    completed += 1;
                    guest.repost(0, head);
                }
            }
            completed + guest.take_used(0).len()
        });
        let result = std::panic::catch_unwind(|| {
            within(Duration::from_secs(5), move || {
                let mut dev = dev;
                dev.process_queue();
                dev
            })
        });
        stop.store(true, Ordering::SeqCst);
        let completed = driver.join().unwrap();
        let _dev = result.unwrap();
        assert_eq!(completed, 16, "one queue's worth of requests");
        assert_eq!(evt.read().unwrap(), 1, "the device asked to be run again");
    }

    #[test]
    fn swap_disk_changes_capacity_and_signals() {
        let h = harness(4);
        header(&h.mem, VIRTIO_BLK_T_FLUSH, 0);
        let (_, _, mut dev) = run(
            &h,
            false,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        );
        let other = vmm_sys_util::tempfile::TempFile::new().unwrap();
        other.as_file().set_len(1 << 20).unwrap();
        let old = dev.swap_disk(DiskFile::open(other.as_path(), false, None).unwrap());
        assert_eq!(old.capacity, 4);
        assert_eq!(dev.capacity(), 2048);
        dev.notify_config_change().unwrap();
        let st = dev.active.as_ref().unwrap().interrupt.status();
        assert_ne!(st & VIRTIO_MMIO_INT_CONFIG, 0);
        let _ = dev.path();
        let mut f = other.as_file();
        f.write_all(b"x").unwrap();
    }
}
