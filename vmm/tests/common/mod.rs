//! Shared by the integration tests: tiny hand-assembled PVH guests.
#![allow(dead_code)]

use std::io::Write;

pub const LOAD_ADDR: u32 = 0x10_0000;

/// A minimal ELF64 with one PT_LOAD at 1 MiB holding `code` and a Xen PVH entry note.
pub fn pvh_elf(code: &[u8]) -> vmm_sys_util::tempfile::TempFile {
    let mut f = vec![0u8; 0x1000];
    // ELF header.
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    let put16 = |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |f: &mut Vec<u8>, o: usize, v: u64| f[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut f, 16, 2); // ET_EXEC
    put16(&mut f, 18, 0x3e); // x86-64
    put32(&mut f, 20, 1);
    put64(&mut f, 24, u64::from(LOAD_ADDR)); // e_entry
    put64(&mut f, 32, 64); // e_phoff
    put16(&mut f, 52, 64); // e_ehsize
    put16(&mut f, 54, 56); // e_phentsize
    put16(&mut f, 56, 2); // e_phnum
                          // PT_LOAD
    let p = 64;
    put32(&mut f, p, 1);
    put32(&mut f, p + 4, 5);
    put64(&mut f, p + 8, 0x1000); // offset
    put64(&mut f, p + 16, u64::from(LOAD_ADDR)); // vaddr
    put64(&mut f, p + 24, u64::from(LOAD_ADDR)); // paddr
    put64(&mut f, p + 32, code.len() as u64);
    put64(&mut f, p + 40, code.len() as u64);
    put64(&mut f, p + 48, 0x1000);
    // PT_NOTE
    let p = 64 + 56;
    put32(&mut f, p, 4);
    put64(&mut f, p + 8, 0x200);
    put64(&mut f, p + 32, 20);
    put64(&mut f, p + 40, 20);
    put64(&mut f, p + 48, 4);
    // Note: namesz 4, descsz 4, type XEN_ELFNOTE_PHYS32_ENTRY, "Xen\0", entry.
    put32(&mut f, 0x200, 4);
    put32(&mut f, 0x204, 4);
    put32(&mut f, 0x208, 18);
    f[0x20c..0x210].copy_from_slice(b"Xen\0");
    put32(&mut f, 0x210, LOAD_ADDR);
    f.extend_from_slice(code);
    let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
    t.as_file().write_all(&f).unwrap();
    t
}

/// mov al, 0xfe; out 0x64, al; hlt; jmp hlt
pub const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// The kernel's `reboot=pci` sequence, vpod's poweroff line: mov dx, 0xcf9; mov al, 2;
/// out dx, al (SYS_RST: which reset); mov al, 6; out dx, al (RST_CPU: reset now); hlt; jmp hlt
pub const POWEROFF: &[u8] = &[
    0x66, 0xba, 0xf9, 0x0c, 0xb0, 0x02, 0xee, 0xb0, 0x06, 0xee, 0xf4, 0xeb, 0xfd,
];

pub fn kvm_available() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("skipping: no /dev/kvm");
        return false;
    }
    true
}
