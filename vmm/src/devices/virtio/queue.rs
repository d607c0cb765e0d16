//! Taking descriptor chains from a queue the guest controls, for every device.
//!
//! The avail ring is guest memory: a driver (buggy or hostile) can set `avail.idx` to anything.
//! virtio-queue refuses an index more than the queue size ahead of ours (it logs and pops
//! nothing), but `enable_notification` still reports "more available", so a device looping on
//! "pop until empty, re-enable, pop again" spins forever. [`pop_chain`] tells "empty" apart from
//! "broken": a broken ring puts the device in DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2, see
//! [`Interrupt::set_needs_reset`]) and devices stop touching its queues until the driver resets.
//!
//! Work per event is bounded too: a device handles at most one queue size of chains per event
//! ([`Budget`]), then signals its own queue eventfd so the event loop comes back to the rest after
//! serving every other device (and noticing a stop request).

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device::{GuestMemory, Interrupt};

/// A chain popped from a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// Why a queue can't be used any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error(
        "avail.idx {avail} is {ahead} entries ahead of the device's {next} (queue size {size})"
    )]
    /// avail.idx claims more new chains than the queue has entries.
    AvailIdx {
        /// avail.idx as the driver wrote it.
        avail: u16,
        /// The device's next avail index.
        next: u16,
        /// How far ahead that is.
        ahead: u16,
        /// The queue's size.
        size: u16,
    },
    /// The avail ring can't be read.
    #[error("reading the avail ring: {0}")]
    Read(String),
    /// A head index outside the descriptor table.
    #[error("avail ring entry names descriptor {head}, outside the queue (size {size})")]
    Head {
        /// The head the driver made available.
        head: u16,
        /// The queue's size.
        size: u16,
    },
    /// The used ring can't be written.
    #[error("updating the used ring: {0}")]
    Used(String),
}

/// The next chain the driver made available: `Ok(None)` if there is none, `Err` if the ring is
/// inconsistent (the caller must stop using the queue: see [`mark_broken`]).
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemory,
) -> Result<Option<Chain<'a>>, RingError> {
    let size = queue.size();
    let next = queue.next_avail();
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| RingError::Read(format!("{e:?}")))?;
    let ahead = (avail - Wrapping(next)).0;
    if ahead == 0 {
        return Ok(None);
    }
    if ahead > size {
        return Err(RingError::AvailIdx {
            avail: avail.0,
            next,
            ahead,
            size,
        });
    }
    // The driver may move avail.idx again between our read and the queue's own: pop_descriptor_chain
    // then refuses it the same way, which is just as broken.
    let chain = queue
        .pop_descriptor_chain(mem)
        .ok_or_else(|| RingError::Read("the avail ring entry could not be read".into()))?;
    let head = chain.head_index();
    if head >= size {
        return Err(RingError::Head { head, size });
    }
    Ok(Some(chain))
}

/// One turn of a device's loop over a queue: the next chain, or `None` when the queue is empty,
/// when `budget` is spent (the queue's eventfd `evt` is re-signalled for a later turn), or when
/// the ring is broken (the device is marked: see [`mark_broken`]).
#[allow(clippy::too_many_arguments)]
pub fn next_within<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemory,
    budget: &mut Budget,
    evt: &EventFd,
    interrupt: &Interrupt,
    device: &str,
    name: &str,
) -> Option<Chain<'a>> {
    if !budget.take() {
        resignal(evt, device);
        return None;
    }
    match pop_chain(queue, mem) {
        Ok(chain) => chain,
        Err(e) => {
            mark_broken(interrupt, device, name, &e);
            None
        }
    }
}

/// Returns chain `head` to the driver with `len` bytes written. False if the used ring can't be
/// written: the device is then marked (see [`mark_broken`]) and stops using the queue.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
    interrupt: &Interrupt,
    device: &str,
    name: &str,
) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            mark_broken(interrupt, device, name, &RingError::Used(format!("{e:?}")));
            false
        }
    }
}

/// Puts the device in DEVICE_NEEDS_RESET because of `err` on its queue `queue` (logged once: the
/// device stops processing, so nothing more is logged until the driver resets it).
pub fn mark_broken(interrupt: &Interrupt, device: &str, queue: &str, err: &RingError) {
    if interrupt.needs_reset() {
        tracing::debug!("{device}: {queue} queue: {err}");
        return;
    }
    tracing::warn!("{device}: {queue} queue is broken, device needs a reset: {err}");
    if let Err(e) = interrupt.set_needs_reset() {
        tracing::warn!("{device}: raising the config interrupt: {e}");
    }
}

/// How many chains one event may still handle on one queue.
#[derive(Debug)]
pub struct Budget(u16);

impl Budget {
    /// One queue's worth: everything a well-behaved driver can have made available at once.
    pub fn for_queue(queue: &Queue) -> Self {
        Self(queue.size().max(1))
    }

    /// Takes one unit; false when the budget is spent.
    pub fn take(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 -= 1;
        true
    }

    /// Whether nothing is left.
    pub fn spent(&self) -> bool {
        self.0 == 0
    }
}

/// Asks the event loop to come back to this queue on a later turn (the budget ran out).
pub fn resignal(evt: &EventFd, device: &str) {
    if let Err(e) = evt.write(1) {
        tracing::warn!("{device}: re-signalling the queue eventfd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{Desc, Guest, WRITE};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn empty_chain_and_broken_index() {
        let (mut vq, mut queues) = Guest::on(mem(), 1, 16);
        let m = vq.mem.clone();
        let mut q = queues.remove(0);
        assert_eq!(pop_chain(&mut q, &m).unwrap().map(|c| c.head_index()), None);
        vq.add_descs(0, &[Desc::new(0x8_0000, 8, WRITE, 0)]);
        assert_eq!(
            pop_chain(&mut q, &m).unwrap().map(|c| c.head_index()),
            Some(0)
        );
        assert!(pop_chain(&mut q, &m).unwrap().is_none());
        // 17 ahead on a 16-entry queue.
        vq.set_avail_idx(0, 1 + 17);
        assert_eq!(
            pop_chain(&mut q, &m).unwrap_err(),
            RingError::AvailIdx {
                avail: 18,
                next: 1,
                ahead: 17,
                size: 16
            }
        );
        // Exactly a queue's worth ahead is fine; a head outside the table is not.
        vq.set_avail_idx(0, 1 + 16);
        // avail.ring[1]
        vq.write(vq.rings[0].avail + 4 + 2, &16u16.to_le_bytes());
        assert_eq!(
            pop_chain(&mut q, &m).unwrap_err(),
            RingError::Head { head: 16, size: 16 }
        );
    }

    #[test]
    fn needs_reset_is_flagged_once_with_a_config_interrupt() {
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        assert!(!irq.needs_reset());
        let err = RingError::Read("x".into());
        mark_broken(&irq, "test", "q", &err);
        assert!(irq.needs_reset());
        assert_eq!(irq.status(), super::super::device::VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        mark_broken(&irq, "test", "q", &err);
        assert!(irq.irqfd().read().is_err(), "raised only once");
        irq.clear_needs_reset();
        assert!(!irq.needs_reset());
    }

    #[test]
    fn budget_counts_down() {
        let (_vq, mut queues) = Guest::on(mem(), 1, 4);
        let q = queues.remove(0);
        let mut b = Budget::for_queue(&q);
        assert!((0..4).all(|_| b.take()));
        assert!(b.spent());
        assert!(!b.take());
    }
}
