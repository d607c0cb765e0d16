//! Guest RAM: anonymous private mappings with MAP_NORESERVE, so pages cost host memory only once
//! the guest touches them, split around the 32-bit MMIO hole.
//!
//! Each mapping starts on a 2 MiB boundary and is advised MADV_HUGEPAGE: KVM can then back guest
//! memory with transparent huge pages (where the host enables THP), which takes thousands of nested
//! page faults — VM exits — out of every boot. vm-memory only maps at addresses the kernel picks, so we
//! map ourselves and hand vm-memory the pointer; [`RegionOwner`] (the region's "bitmap" slot, which
//! vm-memory keeps as long as the region) unmaps it when the last user of the region is gone.

use std::sync::Arc;

use vm_memory::bitmap::{Bitmap, NewBitmap, WithBitmapSlice};
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::arch::x86_64::layout;

const HUGE_PAGE: usize = 2 << 20;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of a region.
    #[error("mapping {size} bytes of guest memory: {source}")]
    Mmap {
        /// The region's bytes.
        size: u64,
        /// mmap's error.
        source: std::io::Error,
    },
    /// Handing a mapping to vm-memory.
    #[error("registering guest memory with vm-memory: {0}")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// More bytes than a host address holds.
    #[error("guest memory size {0} does not fit the host address space")]
    TooBig(u64),
    /// vm-memory refused the regions.
    #[error("building guest memory: {0}")]
    Collection(String),
    /// madvise on a region.
    #[error("madvise({advice}) on guest memory: {source}")]
    Madvise {
        /// Which advice (MADV_*).
        advice: &'static str,
        /// madvise's error.
        source: std::io::Error,
    },
}

/// A guest RAM mapping made by us; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain process memory; the pointer is only used to unmap it once.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state besides the immutable pointer and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of lazily allocated anonymous memory at a 2 MiB aligned address.
    fn new_aligned(len: usize) -> Result<Self, MemoryError> {
        let err = |size: usize| MemoryError::Mmap {
            size: size as u64,
            source: std::io::Error::last_os_error(),
        };
        let reserve_len = len
            .checked_add(HUGE_PAGE)
            .ok_or(MemoryError::TooBig(len as u64))?;
        let flags = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE;
        // SAFETY: a fresh PROT_NONE reservation at an address of the kernel's choosing.
        let reserve = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
                libc::PROT_NONE,
                flags,
                -1,
                0,
            )
        };
        if reserve == libc::MAP_FAILED {
            return Err(err(reserve_len));
        }
        let start = reserve as usize;
        let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
        // SAFETY: maps over the part of our own reservation that starts at `aligned` (it holds
        // `len` bytes since the reservation has HUGE_PAGE to spare); MAP_FIXED replaces only it.
        let addr = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = err(len);
            // SAFETY: unmaps our own reservation.
            unsafe { libc::munmap(reserve, reserve_len) };
            return Err(e);
        }
        // SAFETY: unmaps the unused head and tail of our own reservation (possibly empty).
        unsafe {
            if aligned > start {
                libc::munmap(reserve, aligned - start);
            }
            let end = aligned + len;
            if start + reserve_len > end {
                libc::munmap(end as *mut libc::c_void, start + reserve_len - end);
            }
        }
        // From here on, dropping `mapping` unmaps it.
        let mapping = Mapping {
            addr: addr as *mut u8,
            len,
        };
        // Guest RAM holds the guest's secrets (tmpfs, keys): keep it out of core dumps of this
        // process and out of any child it forks. Not optional: a failure is an error.
        for (advice, what) in [
            (libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
            (libc::MADV_DONTFORK, "MADV_DONTFORK"),
        ] {
            // SAFETY: advises on exactly the mapping we own; neither advice changes its contents.
            if unsafe { libc::madvise(addr, len, advice) } != 0 {
                return Err(MemoryError::Madvise {
                    advice: what,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        // Advice only: without THP on the host this fails or does nothing, both fine.
        // SAFETY: as above, advice on our own mapping.
        unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value created; no region refers to it any more (the
        // last `RegionOwner` holding it is being dropped with its region).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<RegionOwner>;

/// Keeps a region's [`Mapping`] alive as long as vm-memory keeps the region. Sits in the slot
/// vm-memory reserves for a dirty bitmap; it tracks nothing (no dirty logging).
#[derive(Debug, Clone, Default)]
pub struct RegionOwner {
    /// Only held, never read: dropping it unmaps the region.
    _mapping: Option<Arc<Mapping>>,
}

impl WithBitmapSlice<'_> for RegionOwner {
    type S = ();
}

impl Bitmap for RegionOwner {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

impl NewBitmap for RegionOwner {
    /// Regions vm-memory maps itself (tests' `from_ranges`) need no owner.
    fn with_len(_len: usize) -> Self {
        RegionOwner { _mapping: None }
    }
}

/// Guest RAM of `mem_bytes` laid out around the 32-bit hole (see `arch::x86_64::layout`), each
/// region mapped by us (see the module docs).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (start, size) in layout::ram_ranges(mem_bytes) {
        regions.push(map_region(start, size)?);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Collection(e.to_string()))
}

/// `ram` and, after it, `size` bytes at guest address `start` for memory plugged in later (its
/// pages cost nothing until the guest touches them).
pub fn with_hotplug_region(
    ram: &GuestMemory,
    start: u64,
    size: u64,
) -> Result<GuestMemory, MemoryError> {
    ram.insert_region(Arc::new(map_region(start, size)?))
        .map_err(|e| MemoryError::Collection(e.to_string()))
}

/// One region of guest memory at `start`, mapped by us.
fn map_region(start: u64, size: u64) -> Result<GuestRegionMmap<RegionOwner>, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(size))?;
    let mapping = Arc::new(Mapping::new_aligned(len)?);
    let addr = mapping.addr;
    // SAFETY: `addr..addr+len` is the mapping just made, kept alive by the `RegionOwner`
    // stored in the region itself.
    let region: MmapRegion<RegionOwner> = unsafe {
        vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
            len,
            RegionOwner {
                _mapping: Some(mapping),
            },
        )
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .with_raw_mmap_pointer(addr)
    }
    .build()
    .map_err(MemoryError::Region)?;
    GuestRegionMmap::new(region, GuestAddress(start)).ok_or(MemoryError::Collection(format!(
        "region at {start:#x} overflows"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestMemoryBackend};

    #[test]
    fn lazy_and_split() {
        // 6 GiB of address space must be cheap to create thanks to MAP_NORESERVE + lazy faulting.
        let mem = create_guest_memory(6 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(
            mem.last_addr().raw_value(),
            (1u64 << 32) + (6u64 << 30) - layout::MEM_32BIT_GAP_START - 1
        );
        assert!(!mem.address_in_range(GuestAddress(layout::MMIO_WINDOW_START)));
        mem.write_obj(0xabu8, GuestAddress(1 << 32)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(1 << 32)).unwrap(), 0xab);
    }

    #[test]
    fn mappings_are_huge_page_aligned_and_unmapped_with_the_last_region() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE, 0);
        let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = format!("{host:x}-");
        assert!(maps().lines().any(|l| l.starts_with(&start)));
        let clone = mem.clone();
        drop(mem);
        assert!(
            maps().lines().any(|l| l.starts_with(&start)),
            "unmapped while a clone lives"
        );
        drop(clone);
        assert!(
            !maps().lines().any(|l| l.starts_with(&start)),
            "mapping leaked"
        );
    }

    /// The VmFlags of the mapping that starts at `host` (from /proc/self/smaps).
    fn vm_flags(host: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{host:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {start}");
        let flags = lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("VmFlags line");
        flags.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn guest_ram_is_not_dumped_nor_inherited_by_fork() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let flags = vm_flags(host);
        assert!(
            flags.iter().any(|f| f == "dd"),
            "no MADV_DONTDUMP: {flags:?}"
        );
        assert!(
            flags.iter().any(|f| f == "dc"),
            "no MADV_DONTFORK: {flags:?}"
        );
    }
}
