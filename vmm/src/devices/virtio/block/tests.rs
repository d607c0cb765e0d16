//! virtio-blk device tests: requests through a test guest's queue (`devices::virtio::test_utils`)
//! against a temporary file.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::request::{Request, RequestError};
use super::{Block, DiskFile};
use crate::devices::virtio::device::{
    GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::test_utils::{activate_context, within, Desc, Guest, NEXT, WRITE};

const MEM_SIZE: usize = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

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

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc::new(addr, len, flags, next)
}

fn header(mem: &GuestMemory, t: u32, sector: u64) {
    mem.write_obj(t, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

/// Runs one chain through a fresh device; returns (used len, status byte, device).
fn run(h: &Harness, read_only: bool, descs: &[Desc]) -> (u32, u8, Block) {
    let (mut guest, queues) = Guest::on(h.mem.clone(), 1, 16);
    guest.add_descs(0, descs);
    let disk = DiskFile::open(h.disk_file.as_path(), read_only, Some("vpod-disk-0")).unwrap();
    let mut dev = Block::new(disk).unwrap();
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let (ctx, _evts, interrupt) = activate_context(&h.mem, queues).unwrap();
    dev.activate(ctx).unwrap();
    dev.process_queue();
    let used = guest.take_used(0);
    assert_eq!(guest.used_idx(0), 1, "exactly one chain completed");
    let status: u8 = h.mem.read_obj(GuestAddress(STATUS)).unwrap();
    let irq_status = interrupt.status();
    assert_eq!(irq_status & VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_INT_VRING);
    (used[0].1, status, dev)
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

fn expect_ioerr(h: &Harness, descs: &[Desc]) {
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
        .map(|(i, d)| desc(d.addr, d.len, d.flags, (i as u16 + 1) % 16))
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
fn activate_on(h: &Harness, mem: &GuestMemory, queue: Queue) -> (Block, EventFd, Arc<Interrupt>) {
    let disk = DiskFile::open(h.disk_file.as_path(), false, None).unwrap();
    let mut dev = Block::new(disk).unwrap();
    let (ctx, mut evts, irq) = activate_context(mem, vec![queue]).unwrap();
    dev.activate(ctx).unwrap();
    (dev, evts.remove(0), irq)
}

#[test]
fn avail_idx_beyond_the_queue_size_needs_reset_instead_of_spinning() {
    let h = harness(4);
    header(&h.mem, VIRTIO_BLK_T_FLUSH, 0);
    let (mut guest, mut queues) = Guest::on(h.mem.clone(), 1, 16);
    guest.add_descs(0, &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)]);
    // 17 requests "available" on a 16-entry queue.
    guest.set_avail_idx(0, 17);
    let (dev, _evt, irq) = activate_on(&h, &h.mem, queues.remove(0));
    let mut dev = within(Duration::from_secs(5), move || {
        let mut dev = dev;
        dev.process_queue();
        dev
    });
    assert!(irq.needs_reset(), "DEVICE_NEEDS_RESET flagged");
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0, "config interrupt");
    assert_eq!(guest.used_idx(0), 0, "nothing processed");
    // A broken device stays stopped until the driver resets it.
    guest.set_avail_idx(0, 1);
    dev.process_queue();
    assert_eq!(guest.used_idx(0), 0);
}

#[test]
fn a_busy_guest_gets_one_queue_worth_per_event() {
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
    let st = dev.lifecycle.active().unwrap().interrupt.status();
    assert_ne!(st & VIRTIO_MMIO_INT_CONFIG, 0);
    let _ = dev.path();
    let mut f = other.as_file();
    f.write_all(b"x").unwrap();
}
