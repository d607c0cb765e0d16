//! Guest physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries) and an empty IDT
//! 0x0000_6000  hvm_start_info, then the initrd modlist entry
//! 0x0000_7000  memory map (hvm_memmap_table_entry[])
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA; not in the memory map, so the guest keeps it)
//! 0x0010_0000  start of usable RAM above the legacy hole (kernel loads at its ELF paddr, 16 MiB)
//!   ...        initrd, page aligned, at the top of low RAM
//! 0xc000_0000  end of low RAM: 1 GiB hole for devices
//! 0xd000_0000  virtio-mmio window, 4 KiB per device
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC, 0xfffb_c000 identity map, 0xfffb_d000 TSS (KVM)
//! 0x1_0000_0000 rest of RAM when the guest has more than 3 GiB
//! ```

/// The boot GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) boot IDT, right after the GDT.
pub const IDT_START: u64 = 0x520;
/// `hvm_start_info`, what the PVH entry point gets in %rbx.
pub const PVH_INFO_START: u64 = 0x6000;
/// The initrd's `hvm_modlist_entry`.
pub const MODLIST_START: u64 = 0x6040;
/// The E820-style memory map (`hvm_memmap_table_entry[]`).
pub const MEMMAP_START: u64 = 0x7000;
/// Room for the memory map entries before the next structure.
pub const MEMMAP_MAX_ENTRIES: usize = 8;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the conventional memory the kernel may use below 640 KiB (EBDA above it).
pub const EBDA_START: u64 = 0x9fc00;
/// Start of RAM above the legacy hole.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Start of the 32-bit device hole; RAM above it is relocated to 4 GiB.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Where RAM above the 32-bit hole goes.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;

/// The virtio-mmio window's base.
pub const MMIO_WINDOW_START: u64 = 0xd000_0000;
/// One device's window (virtio-mmio registers and config space).
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;

/// IOAPIC pins we hand to virtio devices: 5-7 and 9-23 (0 PIT, 1 i8042, 4 serial, 8 RTC stay legacy).
pub const VIRTIO_IRQS: [u32; 18] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];
/// How many virtio-mmio devices fit (one IRQ each).
pub const VIRTIO_MMIO_SLOTS: usize = VIRTIO_IRQS.len();

/// KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's TSS pages (KVM_SET_TSS_ADDR), right after the identity map.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Largest guest RAM we lay out.
pub const MAX_GUEST_MEM: u64 = 256 << 30;

/// Serial port (COM1) and its legacy IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 controller data/command ports 0x60..0x64.
pub const I8042_PORT: u16 = 0x60;
/// The reset control register (one byte): a vpod guest's poweroff line.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;

/// Guest RAM ranges (start, size) for `mem_size` bytes of RAM, leaving the 32-bit hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MEM_32BIT_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MEM_32BIT_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MEM_32BIT_GAP_START),
        ]
    }
}

/// (address, irq) of virtio-mmio slot `i`.
pub fn virtio_slot(i: usize) -> Option<(u64, u32)> {
    VIRTIO_IRQS
        .get(i)
        .map(|irq| (MMIO_WINDOW_START + i as u64 * MMIO_DEVICE_SIZE, *irq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_leave_the_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MEM_32BIT_GAP_START));
        assert_eq!(r[1], (1 << 32, (4 << 30) - MEM_32BIT_GAP_START));
        assert_eq!(virtio_slot(1), Some((0xd000_1000, 6)));
        assert_eq!(virtio_slot(VIRTIO_MMIO_SLOTS), None);
        // The whole window stays below the IOAPIC.
        let (last, _) = virtio_slot(VIRTIO_MMIO_SLOTS - 1).unwrap();
        assert!(last + MMIO_DEVICE_SIZE <= 0xfec0_0000);
    }
}
