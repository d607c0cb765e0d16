//! The entropy device: one queue of device-writable buffers.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::devices::virtio::device::{lifecycle_field, GuestMemory, Lifecycle, VirtioDevice};
use crate::devices::virtio::queue::{add_used, next_within, Budget};

/// The request queue's index.
pub(super) const REQUEST_QUEUE: usize = 0;
/// The request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes handed out per request at most: bounds the work one guest notification can cause.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    queue_sizes: [u16; 1],
    pub(super) lifecycle: Lifecycle,
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

impl Rng {
    /// An inactive device (fails only if its eventfd can't be made).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue_sizes: [QUEUE_SIZE],
            lifecycle: Lifecycle::new()?,
        })
    }

    /// Fills one chain; returns the bytes written. A chain with any device-readable descriptor or
    /// one outside guest memory gets nothing.
    fn fill(
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        mem: &GuestMemory,
    ) -> u32 {
        let mut budget = MAX_REQUEST_BYTES;
        let mut targets = Vec::new();
        for d in chain {
            if !d.is_write_only() || !mem.check_range(d.addr(), d.len() as usize) {
                return 0;
            }
            let n = d.len().min(budget);
            budget -= n;
            if n > 0 {
                targets.push((d.addr(), n));
            }
        }
        let mut written = 0;
        let mut buf = vec![0u8; (MAX_REQUEST_BYTES - budget) as usize];
        if getrandom(&mut buf).is_err() {
            return 0;
        }
        let mut src = &buf[..];
        for (addr, n) in targets {
            if mem.write_slice(&src[..n as usize], addr).is_err() {
                break;
            }
            src = &src[n as usize..];
            written += n;
        }
        written
    }

    /// Fills available buffers (at most one queue's worth per call; see `devices::virtio::queue`).
    pub fn process_queue(&mut self) {
        let Some(active) = self.lifecycle.active_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
        }
        let mem = &active.mem;
        let queue = &mut active.queues[REQUEST_QUEUE];
        let mut budget = Budget::for_queue(queue);
        let mut used_any = false;
        while let Some(chain) = next_within(
            queue,
            mem,
            &mut budget,
            &active.queue_events[REQUEST_QUEUE],
            &active.interrupt,
            "rng",
            "request",
        ) {
            let head = chain.head_index();
            let len = Self::fill(chain, mem);
            if !add_used(queue, mem, head, len, &active.interrupt, "rng", "request") {
                break;
            }
            used_any = true;
        }
        if used_any {
            active.notify_used(REQUEST_QUEUE, "rng");
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    lifecycle_field!();

    fn reset(&mut self) -> bool {
        self.lifecycle.reset();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate_context, within, Desc, Guest};
    use crate::devices::virtio::test_utils::{NEXT as N, WRITE as W};
    use vm_memory::GuestAddress;

    fn test_memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn run(descs: &[Desc]) -> (GuestMemory, u32) {
        let mem = test_memory();
        let (mut vq, queues) = Guest::on(mem.clone(), 1, 16);
        vq.add_descs(0, descs);
        let mut rng = Rng::new().unwrap();
        let (ctx, _evts, interrupt) = activate_context(&mem, queues).unwrap();
        rng.activate(ctx).unwrap();
        rng.process_queue();
        assert_eq!(vq.used_idx(0), 1);
        let len = vq.take_used(0)[0].1;
        assert_ne!(interrupt.status(), 0);
        (mem, len)
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc::new(addr, len, flags, next)
    }

    #[test]
    fn broken_avail_ring_needs_reset_instead_of_hanging() {
        let mem = test_memory();
        let (mut vq, queues) = Guest::on(mem.clone(), 1, 16);
        vq.add_descs(0, &[d(0x10_0000, 64, W, 0)]);
        vq.set_avail_idx(0, 17);
        let mut rng = Rng::new().unwrap();
        let (ctx, _evts, irq) = activate_context(&mem, queues).unwrap();
        rng.activate(ctx).unwrap();
        within(std::time::Duration::from_secs(5), move || {
            rng.process_queue()
        });
        assert!(irq.needs_reset());
        assert_eq!(vq.used_idx(0), 0);
    }

    #[test]
    fn one_queue_worth_per_call_then_resignal() {
        let mem = test_memory();
        let (mut vq, queues) = Guest::on(mem.clone(), 1, 4);
        let chains: Vec<_> = (0..4).map(|i| d(0x10_0000 + i * 64, 8, W, 0)).collect();
        vq.add_descs(0, &chains);
        let mut rng = Rng::new().unwrap();
        let (ctx, mut evts, _irq) = activate_context(&mem, queues).unwrap();
        let evt = evts.remove(0);
        rng.activate(ctx).unwrap();
        rng.process_queue();
        assert_eq!(vq.used_idx(0), 4);
        assert_eq!(evt.read().unwrap(), 1, "budget spent: run again next turn");
    }

    #[test]
    fn fills_writable_buffers() {
        let (mem, len) = run(&[d(0x10_0000, 64, W | N, 1), d(0x20_0000, 64, W, 0)]);
        assert_eq!(len, 128);
        let mut a = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        assert_ne!(a, [0u8; 64], "64 random bytes are not all zero");
    }

    #[test]
    fn caps_request_size() {
        let (_, len) = run(&[d(0x10_0000, 0x20_0000, W, 0)]);
        assert_eq!(len, MAX_REQUEST_BYTES);
    }

    #[test]
    fn rejects_bad_buffers() {
        let (_, len) = run(&[d(0x10_0000, 64, 0, 0)]);
        assert_eq!(len, 0);
        let (_, len) = run(&[d(0x3f_ff00, 0x1000, W, 0)]);
        assert_eq!(len, 0);
        // A loop: bounded by the queue size, every descriptor valid: gets bytes, VMM survives.
        let (_, len) = run(&[d(0x10_0000, 8, W | N, 1), d(0x10_0100, 8, W | N, 0)]);
        assert_eq!(len, 16 * 8);
    }
}
