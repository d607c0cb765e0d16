//! PVH boot: load an ELF vmlinux at its physical addresses, the initrd at the top of low RAM, and
//! write `hvm_start_info` + memory map + modlist for the kernel's PVH entry point.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::*;
use crate::devices::virtio::GuestMemory;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const PAGE_SIZE: u64 = 4096;

/// Why the kernel, initrd or boot structures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file (path, error).
    #[error("opening kernel {0}: {1}")]
    OpenKernel(String, #[source] std::io::Error),
    /// The kernel is not an ELF vmlinux with a PVH entry note.
    #[error("not a PVH vmlinux: {0}")]
    NotPvh(String),
    /// The initrd file (path, error).
    #[error("opening initrd {0}: {1}")]
    OpenInitrd(String, #[source] std::io::Error),
    /// The initrd doesn't fit between the kernel and the end of low RAM.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel (ends at {kernel_end:#x}); give the VM more memory")]
    InitrdTooBig {
        /// The initrd's bytes.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Reading the initrd into guest memory.
    #[error("loading initrd: {0}")]
    LoadInitrd(String),
    /// Writing the command line.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing hvm_start_info, the modlist or the memory map.
    #[error("writing PVH boot parameters: {0}")]
    BootParams(String),
}

/// Where the kernel will start.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The kernel's PVH entry point.
    pub entry: GuestAddress,
    /// Where `hvm_start_info` is (the entry point's %rbx).
    pub start_info: GuestAddress,
}

/// Opens the kernel for [`load`].
pub fn open_kernel(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|e| BootError::OpenKernel(path.display().to_string(), e))
}

/// Opens the initrd for [`load`].
pub fn open_initrd(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|e| BootError::OpenInitrd(path.display().to_string(), e))
}

/// Loads the kernel, initrd and command line, and writes the PVH start info. The files are
/// opened by the caller ([`open_kernel`], [`open_initrd`]): a jailed VMM opens them before it
/// enters its jail.
pub fn load(
    mem: &GuestMemory,
    kernel_file: &mut File,
    initrd: Option<&mut File>,
    cmdline: &Cmdline,
) -> Result<BootInfo, BootError> {
    let loaded = Elf::load(
        mem,
        None,
        kernel_file,
        Some(GuestAddress(HIGH_MEMORY_START)),
    )
    .map_err(|e| BootError::NotPvh(describe_loader_error(e)))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => {
            return Err(BootError::NotPvh(
                "the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note (build with CONFIG_PVH=y)".into(),
            ))
        }
    };

    let initrd_range = match initrd {
        Some(file) => Some(load_initrd(mem, file, loaded.kernel_end)?),
        None => None,
    };

    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    if cmdline_len >= CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(format!(
            "{cmdline_len} bytes, the kernel takes at most {}",
            CMDLINE_MAX_SIZE - 1
        )));
    }

    write_start_info(mem, initrd_range)?;
    Ok(BootInfo {
        entry,
        start_info: GuestAddress(PVH_INFO_START),
    })
}

fn describe_loader_error(e: linux_loader::loader::Error) -> String {
    use linux_loader::loader::elf::Error as ElfError;
    match e {
        linux_loader::loader::Error::Elf(ElfError::InvalidElfMagicNumber) => {
            "not an ELF file (a bzImage? use the uncompressed vmlinux)".into()
        }
        linux_loader::loader::Error::Elf(ElfError::ReadElfHeader) => {
            "file too short for an ELF header".into()
        }
        linux_loader::loader::Error::Elf(ElfError::InvalidEntryAddress) => {
            "entry point below 1 MiB".into()
        }
        linux_loader::loader::Error::Elf(ElfError::ReadKernelImage) => {
            "a segment does not fit in guest memory (too little memory?) or the file is truncated"
                .into()
        }
        other => other.to_string(),
    }
}

/// Top of the RAM below the 32-bit hole.
fn low_ram_end(mem: &GuestMemory) -> u64 {
    let last = mem.last_addr().raw_value() + 1;
    last.min(MEM_32BIT_GAP_START)
}

fn load_initrd(
    mem: &GuestMemory,
    file: &mut File,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let size = file
        .metadata()
        .map_err(|e| BootError::OpenInitrd("(open file)".into(), e))?
        .len();
    let top = low_ram_end(mem);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooBig { size, kernel_end })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { size, kernel_end })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| BootError::LoadInitrd(e.to_string()))?;
    Ok((addr, size))
}

/// The E820-style map the kernel gets: conventional memory below the EBDA, then everything from
/// 1 MiB, split around the 32-bit hole.
pub fn memory_map(mem: &GuestMemory) -> Vec<hvm_memmap_table_entry> {
    let mut map = vec![hvm_memmap_table_entry {
        addr: 0,
        size: EBDA_START,
        type_: E820_RAM,
        reserved: 0,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIGH_MEMORY_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(hvm_memmap_table_entry {
                addr: start,
                size: end - start,
                type_: E820_RAM,
                reserved: 0,
            });
        }
    }
    map
}

fn write_start_info(mem: &GuestMemory, initrd: Option<(u64, u64)>) -> Result<(), BootError> {
    let map = memory_map(mem);
    debug_assert!(map.len() <= MEMMAP_MAX_ENTRIES);
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: map.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { MODLIST_START } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&map, GuestAddress(MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[module], GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemory {
        let ranges: Vec<_> = ram_ranges(size)
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemory::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn rejects_non_elf() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file()
            .write_all(&[0x4d, 0x5a, 0, 0].repeat(64))
            .unwrap();
        let m = mem(64 << 20);
        let cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        let e = load(&m, &mut open_kernel(f.as_path()).unwrap(), None, &cl).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("not a PVH vmlinux: not an ELF file"),
            "{e}"
        );
        let empty = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let e = load(&m, &mut open_kernel(empty.as_path()).unwrap(), None, &cl).unwrap_err();
        assert!(e.to_string().starts_with("not a PVH vmlinux"), "{e}");
    }

    #[test]
    fn memory_map_skips_legacy_hole() {
        let m = mem(5 << 30);
        let map = memory_map(&m);
        assert_eq!(map.len(), 3);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!(
            (map[1].addr, map[1].size),
            (HIGH_MEMORY_START, MEM_32BIT_GAP_START - HIGH_MEMORY_START)
        );
        assert_eq!(
            (map[2].addr, map[2].size),
            (1 << 32, (5 << 30) - MEM_32BIT_GAP_START)
        );
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram() {
        let m = mem(64 << 20);
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(&[7u8; 5000]).unwrap();
        let (addr, size) =
            load_initrd(&m, &mut open_initrd(f.as_path()).unwrap(), 32 << 20).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr, (64 << 20) - 8192);
        let b: u8 = m.read_obj(GuestAddress(addr + 4999)).unwrap();
        assert_eq!(b, 7);
        // Doesn't fit above a kernel ending at 63.999 MiB.
        assert!(matches!(
            load_initrd(
                &m,
                &mut open_initrd(f.as_path()).unwrap(),
                (64 << 20) - 4096
            ),
            Err(BootError::InitrdTooBig { .. })
        ));
    }
}
