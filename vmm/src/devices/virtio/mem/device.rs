//! The virtio-mem device: its region, the plugged-block bitmap, config space and the request
//! queue.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::request::*;
use crate::devices::virtio::device::{lifecycle_field, GuestMemory, Lifecycle, VirtioDevice};
use crate::devices::virtio::queue::{add_used, next_within, Budget, Chain};

/// virtio-mem's device id (virtio 1.2 §5).
pub const VIRTIO_ID_MEM: u32 = 24;
/// The driver will not touch unplugged memory (Linux accepts it; the device offers it so that a
/// guest that does is out of spec, not merely unlucky).
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
/// The unit of plugging: 2 MiB (a huge page; Linux's driver works in sub-blocks of it).
pub const BLOCK_SIZE: u64 = 2 << 20;
/// The region's size is a multiple of Linux's x86_64 memory block, which it onlines whole.
pub const REGION_ALIGN: u64 = 128 << 20;
/// Where the region starts: 1 GiB boundaries from 4 GiB up, past RAM.
const REGION_START_ALIGN: u64 = 1 << 30;
/// The request queue's index and maximum size.
pub(super) const REQUEST_QUEUE: usize = 0;
/// The request queue's maximum size.
pub const QUEUE_SIZE: u16 = 128;
/// `struct virtio_mem_config`'s size.
const CONFIG_SIZE: usize = 56;

/// Why a region or a requested size is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// A region of no size, or not a multiple of [`REGION_ALIGN`].
    #[error("hotplug region of {0} bytes: must be a non-zero multiple of 128 MiB")]
    RegionSize(u64),
    /// The region would end past the guest's physical address space.
    #[error("hotplug region of {size} bytes after {ram} bytes of RAM: beyond the address space")]
    RegionTooHigh {
        /// The RAM before it.
        ram: u64,
        /// The region's size.
        size: u64,
    },
    /// More than the region holds.
    #[error("requested {requested} bytes of hotplug memory; the region holds {region}")]
    TooLarge {
        /// What was asked for.
        requested: u64,
        /// The region's size.
        region: u64,
    },
}

/// The guest physical range the device hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRegion {
    /// First address (1 GiB aligned, at or above 4 GiB).
    pub addr: u64,
    /// Bytes (a multiple of [`REGION_ALIGN`]).
    pub size: u64,
}

impl HotplugRegion {
    /// `size` bytes of hotplug memory for a guest with `ram_end` as the first address past its
    /// RAM: from 4 GiB (clear of the 32-bit device hole), or past RAM that reaches above it.
    pub fn after_ram(ram_end: u64, size: u64) -> Result<Self, MemError> {
        if size == 0 || !size.is_multiple_of(REGION_ALIGN) {
            return Err(MemError::RegionSize(size));
        }
        let too_high = MemError::RegionTooHigh { ram: ram_end, size };
        let addr = ram_end
            .max(1 << 32)
            .checked_next_multiple_of(REGION_START_ALIGN)
            .ok_or(too_high.clone())?;
        // x86_64 guests have at least 40 physical address bits; stay well inside them.
        if addr.checked_add(size).is_none_or(|end| end > 1 << 40) {
            return Err(too_high);
        }
        Ok(Self { addr, size })
    }

    /// How many blocks it holds.
    pub fn blocks(&self) -> usize {
        (self.size / BLOCK_SIZE) as usize
    }
}

/// A virtio-mem device.
#[derive(Debug)]
pub struct Mem {
    region: HotplugRegion,
    plugged: Vec<bool>,
    plugged_size: u64,
    requested_size: u64,
    config: [u8; CONFIG_SIZE],
    queue_sizes: [u16; 1],
    pub(super) lifecycle: Lifecycle,
}

impl Mem {
    /// A device for `region`, nothing plugged or requested (fails only if its eventfd can't be
    /// made). The region must be in the guest memory the device gets on activation.
    pub fn new(region: HotplugRegion) -> std::io::Result<Self> {
        let mut dev = Self {
            region,
            plugged: vec![false; region.blocks()],
            plugged_size: 0,
            requested_size: 0,
            config: [0; CONFIG_SIZE],
            queue_sizes: [QUEUE_SIZE],
            lifecycle: Lifecycle::new()?,
        };
        dev.update_config();
        Ok(dev)
    }

    /// The device's region.
    pub fn region(&self) -> HotplugRegion {
        self.region
    }

    /// Bytes the guest has plugged.
    pub fn plugged_size(&self) -> u64 {
        self.plugged_size
    }

    /// Bytes the host asks the guest to plug.
    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// Asks the guest to plug `bytes` (rounded up to whole blocks) in all; the caller raises the
    /// config-change interrupt so the driver reads it.
    pub fn set_requested_size(&mut self, bytes: u64) -> Result<u64, MemError> {
        let too_large = MemError::TooLarge {
            requested: bytes,
            region: self.region.size,
        };
        let rounded = bytes
            .checked_next_multiple_of(BLOCK_SIZE)
            .ok_or(too_large.clone())?;
        if rounded > self.region.size {
            return Err(too_large);
        }
        self.requested_size = rounded;
        self.update_config();
        Ok(rounded)
    }

    fn update_config(&mut self) {
        let c = &mut self.config;
        c[0..8].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        // node_id (8..10) and padding stay zero: no NUMA.
        c[16..24].copy_from_slice(&self.region.addr.to_le_bytes());
        c[24..32].copy_from_slice(&self.region.size.to_le_bytes());
        // The whole region is usable.
        c[32..40].copy_from_slice(&self.region.size.to_le_bytes());
        c[40..48].copy_from_slice(&self.plugged_size.to_le_bytes());
        c[48..56].copy_from_slice(&self.requested_size.to_le_bytes());
    }

    /// The blocks `addr..addr + nb_blocks * BLOCK_SIZE` as indexes, if that is a non-empty,
    /// block-aligned range inside the region.
    fn blocks(&self, addr: u64, nb_blocks: u16) -> Option<std::ops::Range<usize>> {
        let offset = addr.checked_sub(self.region.addr)?;
        if nb_blocks == 0 || !offset.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let first = usize::try_from(offset / BLOCK_SIZE).ok()?;
        let end = first.checked_add(usize::from(nb_blocks))?;
        (end <= self.plugged.len()).then_some(first..end)
    }

    /// Gives blocks' host memory back: the guest reads zeros there if it ever looks again.
    fn discard(&self, mem: &GuestMemory, blocks: std::ops::Range<usize>) {
        let addr = self.region.addr + blocks.start as u64 * BLOCK_SIZE;
        let len = blocks.len() as u64 * BLOCK_SIZE;
        let Ok(host) = mem.get_host_address(GuestAddress(addr)) else {
            return;
        };
        // The region is one mapping, so the range is contiguous host memory inside it.
        if !mem.check_range(GuestAddress(addr), len as usize) {
            return;
        }
        // SAFETY: `host..host+len` lies inside the region's mapping (checked above); DONTNEED
        // on private anonymous memory only replaces its pages with zero pages, which every
        // accessor (volatile, through vm-memory, or the guest) may observe at any time.
        if unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) } != 0 {
            tracing::warn!(
                "virtio-mem: MADV_DONTNEED on unplugged memory: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Carries out one request: (response type, state).
    pub(super) fn handle(&mut self, req: Option<Request>, mem: &GuestMemory) -> (u16, u16) {
        let resp = match req {
            Some(Request::Plug { addr, nb_blocks }) => match self.blocks(addr, nb_blocks) {
                Some(r) if self.plugged[r.clone()].iter().any(|p| *p) => (RESP_ERROR, 0),
                Some(r) => {
                    let size = r.len() as u64 * BLOCK_SIZE;
                    if self.plugged_size + size > self.requested_size {
                        (RESP_NACK, 0)
                    } else {
                        self.plugged[r].fill(true);
                        self.plugged_size += size;
                        (RESP_ACK, 0)
                    }
                }
                None => (RESP_ERROR, 0),
            },
            Some(Request::Unplug { addr, nb_blocks }) => match self.blocks(addr, nb_blocks) {
                Some(r) if self.plugged[r.clone()].iter().all(|p| *p) => {
                    self.discard(mem, r.clone());
                    self.plugged_size -= r.len() as u64 * BLOCK_SIZE;
                    self.plugged[r].fill(false);
                    (RESP_ACK, 0)
                }
                _ => (RESP_ERROR, 0),
            },
            Some(Request::UnplugAll) => {
                self.discard(mem, 0..self.plugged.len());
                self.plugged.fill(false);
                self.plugged_size = 0;
                (RESP_ACK, 0)
            }
            Some(Request::State { addr, nb_blocks }) => match self.blocks(addr, nb_blocks) {
                Some(r) => {
                    let plugged = self.plugged[r.clone()].iter().filter(|p| **p).count();
                    let state = match plugged {
                        0 => STATE_UNPLUGGED,
                        n if n == r.len() => STATE_PLUGGED,
                        _ => STATE_MIXED,
                    };
                    (RESP_ACK, state)
                }
                None => (RESP_ERROR, 0),
            },
            Some(Request::Unknown(_)) | None => (RESP_ERROR, 0),
        };
        self.update_config();
        resp
    }

    /// Reads the request of `chain` (its device-readable part) and where its response goes (the
    /// first device-writable descriptor with room for one).
    fn read_chain(chain: Chain<'_>, mem: &GuestMemory) -> (Option<Request>, Option<GuestAddress>) {
        let mut req = [0u8; REQ_SIZE];
        let mut have = 0;
        let mut resp = None;
        for d in chain {
            if d.is_write_only() {
                if resp.is_none()
                    && d.len() as usize >= RESP_SIZE
                    && mem.check_range(d.addr(), RESP_SIZE)
                {
                    resp = Some(d.addr());
                }
            } else if resp.is_none() && have < REQ_SIZE {
                let n = (d.len() as usize).min(REQ_SIZE - have);
                if mem.read_slice(&mut req[have..have + n], d.addr()).is_err() {
                    return (None, resp);
                }
                have += n;
            }
        }
        (Request::parse(&req[..have]), resp)
    }

    /// Answers the requests the driver queued (at most one queue's worth per call).
    pub fn process_queue(&mut self) {
        let Some(active) = self.lifecycle.active_mut() else {
            return;
        };
        if active.interrupt.needs_reset() {
            return;
        }
        // A clone (an Arc of the regions) so that requests can change `self` while chains
        // borrow the memory.
        let mem = active.mem.clone();
        let mut budget = Budget::for_queue(&active.queues[REQUEST_QUEUE]);
        let mut used_any = false;
        loop {
            let Some(active) = self.lifecycle.active_mut() else {
                return;
            };
            let Some(chain) = next_within(
                &mut active.queues[REQUEST_QUEUE],
                &mem,
                &mut budget,
                &active.queue_events[REQUEST_QUEUE],
                &active.interrupt,
                "virtio-mem",
                "request",
            ) else {
                break;
            };
            let head = chain.head_index();
            let (req, resp_at) = Self::read_chain(chain, &mem);
            let mut len = 0;
            // A chain with nowhere to answer changes nothing: the driver can't learn the outcome.
            if let Some(at) = resp_at {
                let (ty, state) = self.handle(req, &mem);
                if mem.write_slice(&response(ty, state), at).is_ok() {
                    len = RESP_SIZE as u32;
                }
            }
            let Some(active) = self.lifecycle.active_mut() else {
                return;
            };
            let queue = &mut active.queues[REQUEST_QUEUE];
            if !add_used(
                queue,
                &mem,
                head,
                len,
                &active.interrupt,
                "virtio-mem",
                "request",
            ) {
                break;
            }
            used_any = true;
        }
        if used_any {
            if let Some(active) = self.lifecycle.active_mut() {
                active.notify_used(REQUEST_QUEUE, "virtio-mem");
            }
        }
    }
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)
    }

    lifecycle_field!();

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// Plugged blocks stay plugged across a reset (virtio 1.2 §5.15.5.1): a driver that comes
    /// back after one finds `plugged_size` and starts with UNPLUG_ALL.
    fn reset(&mut self) -> bool {
        self.lifecycle.reset();
        true
    }
}
