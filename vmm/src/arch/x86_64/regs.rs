//! Initial vCPU state for the PVH entry: 32-bit protected mode, paging off, flat segments from a
//! small GDT in guest memory, EBX = physical address of `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{GDT_START, IDT_START};
use crate::devices::virtio::GuestMemory;

/// Why a vCPU's boot registers could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT into guest memory.
    #[error("writing the GDT to guest memory: {0}")]
    Gdt(vm_memory::GuestMemoryError),
    /// A KVM call (which one, its error).
    #[error("{0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const EFLAGS_RESERVED: u64 = 0x2;

/// Null, code, data, TSS: the layout the kernel's PVH entry expects (it loads its own GDT soon).
const GDT_CODE: usize = 1;
const GDT_DATA: usize = 2;
const GDT_TSS: usize = 3;

/// Packs a GDT descriptor from `flags` (access byte in bits 0-7, flags nibble in 12-15), base, limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, flat 32-bit code, flat data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB, execute/read, accessed
        gdt_entry(0xc093, 0, 0xfffff), // 32-bit data, 4 GiB, read/write, accessed
        gdt_entry(0x008b, 0, 0x67),    // busy 32-bit TSS
    ]
}

/// Decodes a GDT descriptor into the KVM segment register it describes.
pub fn segment_from_gdt(entry: u64, table_index: usize) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: (table_index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT and returns special registers for the PVH entry, starting from `sregs`.
pub fn pvh_sregs(mem: &GuestMemory, mut sregs: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt();
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + (i * 8) as u64))
            .map_err(RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(RegsError::Gdt)?;

    let code = segment_from_gdt(gdt[GDT_CODE], GDT_CODE);
    let data = segment_from_gdt(gdt[GDT_DATA], GDT_DATA);
    let tss = segment_from_gdt(gdt[GDT_TSS], GDT_TSS);

    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(sregs)
}

/// Sets the vCPU's segment and control registers for the PVH entry (32-bit protected mode,
/// paging off) and writes the GDT.
pub fn setup_sregs(vcpu: &VcpuFd, mem: &GuestMemory) -> Result<(), RegsError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    let sregs = pvh_sregs(mem, sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))
}

/// The general registers at the PVH entry: %rip at `entry`, %rbx at `start_info`.
pub fn pvh_regs(entry: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rflags: EFLAGS_RESERVED,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    }
}

/// Sets [`pvh_regs`] on the vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64, start_info: u64) -> Result<(), RegsError> {
    vcpu.set_regs(&pvh_regs(entry, start_info))
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

/// Sets the FPU's initial control words.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(b)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the PIC's output), LINT1 = NMI, as the MP spec's virtual-wire mode wants.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_roundtrip() {
        let gdt = boot_gdt();
        assert_eq!(gdt[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_),
            (0, 0xffff_ffff, 8, 0xb)
        );
        assert_eq!(
            (cs.present, cs.s, cs.db, cs.g, cs.l, cs.unusable),
            (1, 1, 1, 1, 0, 0)
        );
        let tr = segment_from_gdt(gdt[3], 3);
        assert_eq!(
            (tr.limit, tr.type_, tr.s, tr.selector),
            (0x67, 0xb, 0, 0x18)
        );
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn sregs_and_regs() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = pvh_sregs(&mem, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(s.cr0 & 0x8000_0000, 0, "paging must be off");
        assert_eq!(s.gdt.limit, 31);
        assert_eq!(s.ds.selector, 0x10);
        let d: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(d, boot_gdt()[1]);
        let r = pvh_regs(0x100_0000, 0x6000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn lapic_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        let v = set_delivery_mode(lapic_reg(&regs, APIC_LVT0), APIC_MODE_NMI);
        assert_eq!(v, 0x0001_0400);
    }
}
