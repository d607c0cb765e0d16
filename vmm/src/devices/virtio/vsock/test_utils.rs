//! A fake guest driver for device tests: split virtqueues in test guest memory, driven the way a
//! driver does it (descriptor table, avail ring, used ring), plus an event manager running the
//! device as the VMM would. Used by the vsock and net tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::device::{ActivateContext, GuestMemory, Interrupt, VirtioDevice};

pub const MEM_SIZE: usize = 0x100_0000;
const QUEUE_STRIDE: u64 = 0x1_0000;
const BUF_START: u64 = 0x10_0000;

/// A driver-side split queue.
pub struct Ring {
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    /// head -> descriptors (addr, len) of chains we made available.
    pub chains: HashMap<u16, Vec<(u64, u32)>>,
}

pub struct Guest {
    pub mem: GuestMemory,
    pub rings: Vec<Ring>,
    next_buf: u64,
}

impl Guest {
    /// Guest memory with `nqueues` queues of `size` entries; returns the device-side queues too.
    pub fn new(nqueues: usize, size: u16) -> (Self, Vec<Queue>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for i in 0..nqueues {
            // Our own layout: virtio_queue::mock::MockSplitQueue 0.18 places the used ring right
            // after `avail + 4 + len` *bytes*, overlapping the avail ring's upper half.
            let base = i as u64 * QUEUE_STRIDE;
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            assert!(used + 6 + 8 * u64::from(size) <= base + QUEUE_STRIDE);
            let mut q = Queue::new(size).unwrap();
            q.set_size(size);
            q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
            q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
            q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            q.set_ready(true);
            assert!(q.is_valid(&mem));
            queues.push(q);
            rings.push(Ring {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
                chains: HashMap::new(),
            });
        }
        (
            Self {
                mem,
                rings,
                next_buf: BUF_START,
            },
            queues,
        )
    }

    /// A fresh guest buffer of `len` bytes (16-byte aligned, never reused).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (self.next_buf + u64::from(len) + 15) & !15;
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test guest memory exhausted"
        );
        addr
    }

    /// Makes a chain of (addr, len, device_writable) available on queue `q`; returns its head.
    pub fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let mem = &self.mem;
        let r = &mut self.rings[q];
        let head = r.next_desc % r.size;
        let mut idx = head;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let next = (idx + 1) % r.size;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = r.desc + 16 * u64::from(idx);
            mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
            mem.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
            mem.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
            idx = next;
        }
        r.next_desc = idx;
        r.chains
            .insert(head, descs.iter().map(|d| (d.0, d.1)).collect());
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(r.avail_idx.to_le(), GuestAddress(r.avail + 2))
            .unwrap();
        head
    }

    /// Makes an already-built chain available again (a driver recycling its buffers).
    pub fn repost(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(r.avail_idx.to_le(), GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// Writes `idx` into queue `q`'s avail.idx as is (a driver lying about its ring).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let r = &mut self.rings[q];
        r.avail_idx = idx;
        self.mem
            .write_obj(idx.to_le(), GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// The avail.idx the driver published last on queue `q`.
    pub fn avail_idx(&self, q: usize) -> u16 {
        self.rings[q].avail_idx
    }

    /// New used elements (head, len) on queue `q` since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let mem = &self.mem;
        let r = &mut self.rings[q];
        let idx: u16 = mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        let mut out = Vec::new();
        while r.used_seen != idx {
            let at = r.used + 4 + 8 * u64::from(r.used_seen % r.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// A device running in an event manager, activated with a fake guest's queues.
pub struct Harness<D: VirtioDevice + MutEventSubscriber + 'static> {
    pub em: EventManager<Arc<Mutex<D>>>,
    pub dev: Arc<Mutex<D>>,
    pub guest: Guest,
    pub queue_evts: Vec<EventFd>,
    pub irq: EventFd,
    pub interrupt: Arc<Interrupt>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Harness<D> {
    pub fn new(dev: D, size: u16) -> Self {
        let nqueues = dev.queue_max_sizes().len();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<D>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let (guest, queues) = Guest::new(nqueues, size);
        let queue_evts: Vec<EventFd> = (0..nqueues)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let ctx = ActivateContext {
            mem: guest.mem.clone(),
            queues,
            queue_events: queue_evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
        };
        dev.lock().unwrap().activate(ctx).unwrap();
        let mut h = Self {
            em,
            dev,
            guest,
            queue_evts,
            irq,
            interrupt,
        };
        h.run();
        assert!(h.dev.lock().unwrap().is_activated());
        h
    }

    /// Runs the event loop until it has been idle for a short while.
    pub fn run(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut idle = 0;
        while idle < 3 && Instant::now() < deadline {
            if self.em.run_with_timeout(10).unwrap() == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
        }
    }

    /// QueueNotify for queue `q`, then run the loop.
    pub fn kick(&mut self, q: usize) {
        self.queue_evts[q].write(1).unwrap();
        self.run();
    }

    /// Whether the device raised its interrupt since the last call.
    pub fn irq_fired(&self) -> bool {
        self.irq.read().is_ok()
    }
}
