//! Intel MultiProcessor Specification 1.4 table. Without ACPI this is how the guest kernel finds
//! its CPUs, the IOAPIC (so virtio IRQs above 15 work) and the identity IRQ routing KVM's in-kernel
//! irqchip implements (GSI n -> IOAPIC pin n). It lives at the start of the EBDA (0x9fc00), one of
//! the places Linux scans for the "_MP_" floating pointer.

use vm_memory::{Bytes, GuestAddress};

use super::layout::EBDA_START;
use crate::devices::virtio::GuestMemory;

/// Where the MP floating pointer and table go (the EBDA).
pub const MPTABLE_START: u64 = EBDA_START;
const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC pins 0..=23.
const IRQ_MAX: u8 = 23;
const MPC_SPEC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const BUS_ID_ISA: u8 = 0;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than APIC ids we hand out.
    #[error("{0} vCPUs don't fit in an MP table (max 254)")]
    TooManyCpus(u8),
    /// Writing it into guest memory.
    #[error("writing the MP table: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `num_cpus` vCPUs, to be placed at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        // type, irqtype, irqflag (u16: conforming polarity/trigger), srcbus, srcbusirq, dstapic, dstirq
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, BUS_ID_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on every local APIC (dstapic 0xff).
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, BUS_ID_ISA, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, BUS_ID_ISA, 0, 0xff, 1]);
    count += 2;

    const FPS_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = (base + FPS_LEN as u64) as u32;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum
    header.extend_from_slice(b"VPOD    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // oem table
    header.extend_from_slice(&0u16.to_le_bytes()); // oem size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fps = Vec::with_capacity(FPS_LEN);
    fps.extend_from_slice(b"_MP_");
    fps.extend_from_slice(&table_addr.to_le_bytes());
    fps.push(1); // length in 16-byte units
    fps.push(MPC_SPEC);
    fps.push(0); // checksum
    fps.extend_from_slice(&[0u8; 5]); // features: config table present, no default config
    fps[10] = checksum(&fps);

    let mut out = fps;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes an MP table for `num_cpus` vCPUs (their APICs, the IOAPIC, ISA interrupts) at
/// [`MPTABLE_START`].
pub fn setup(mem: &GuestMemory, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn structure_and_checksums() {
        for cpus in [1u8, 2, 254] {
            let t = build(cpus, MPTABLE_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 24 + 2);
            assert_eq!(len, 44 + 20 * cpus as usize + 8 + 8 + 24 * 8 + 16);
            // First CPU is the BSP.
            assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
        assert!(build(0, 0).is_err());
        assert!(build(255, 0).is_err());
    }

    #[test]
    fn fits_in_guest_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup(&mem, 254).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
