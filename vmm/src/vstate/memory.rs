//! Guest RAM: anonymous private mappings with MAP_NORESERVE, so pages cost host memory only once
//! the guest touches them, split around the 32-bit MMIO hole.

use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::arch::x86_64::layout;
use crate::devices::virtio::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("mapping {size} bytes of guest memory: {source}")]
    Mmap {
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory size {0} does not fit the host address space")]
    TooBig(u64),
    #[error("building guest memory: {0}")]
    Collection(String),
}

pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (start, size) in layout::ram_ranges(mem_bytes) {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(mem_bytes))?;
        let mapping = vm_memory::mmap::MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Mmap { size, source })?;
        let mapping: MmapRegion<()> = mapping;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(
            MemoryError::Collection(format!("region at {start:#x} overflows")),
        )?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Collection(e.to_string()))
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
}
