//! Real KVM runs of tiny hand-assembled PVH "kernels": the full path from ELF loading through
//! vCPU setup, PIO/MMIO exits, legacy devices and exit decisions. Needs /dev/kvm (skipped without).

use std::io::Write;
use std::time::{Duration, Instant};

use vpod_vmm::{Console, VmConfig, VmExit, Vmm};

const LOAD_ADDR: u32 = 0x10_0000;

/// A minimal ELF64 with one PT_LOAD at 1 MiB holding `code` and a Xen PVH entry note.
fn pvh_elf(code: &[u8]) -> vmm_sys_util::tempfile::TempFile {
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
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

fn announce(byte: u8) -> Vec<u8> {
    let mut c = vec![0xb0, byte, 0xe6, 0xf4]; // mov al, byte; out 0xf4, al
    c.extend_from_slice(RESET);
    c
}

fn kvm_available() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("skipping: no /dev/kvm");
        return false;
    }
    true
}

fn run(code: &[u8], tweak: impl FnOnce(&mut VmConfig)) -> (VmExit, vpod_vmm::VmMetrics) {
    let kernel = pvh_elf(code);
    let mut config = VmConfig::new(kernel.as_path());
    config.mem_mib = 32;
    config.console = Console::Off;
    tweak(&mut config);
    let vm = Vmm::start(config).unwrap();
    let stopper = vm.stop_handle();
    // A guard so a broken guest can't hang the test suite.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stopper.stop();
    });
    let exit = vm.wait();
    (exit, vm.metrics())
}

#[test]
fn poweroff_and_reboot_announcements() {
    if !kvm_available() {
        return;
    }
    let (exit, m) = run(&announce(1), |_| {});
    assert_eq!(exit, VmExit::Poweroff);
    assert!(m.start_to_first_kvm_run_us.is_some());
    assert!(m.userspace_exits["io_out"] >= 2, "{m:?}");
    let (exit, _) = run(&announce(2), |_| {});
    assert_eq!(exit, VmExit::Reboot);
    let (exit, _) = run(RESET, |_| {});
    assert_eq!(exit, VmExit::Reboot, "an unannounced reset is a reboot");
}

#[test]
fn panic_on_serial_then_reset() {
    if !kvm_available() {
        return;
    }
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"Kernel panic - not syncing: test\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(RESET);
    let out = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let path = out.as_path().to_path_buf();
    let (exit, _) = run(&code, |c| c.console = Console::File(path.clone()));
    assert_eq!(exit, VmExit::Panic);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "Kernel panic - not syncing: test\n");
}

#[test]
fn triple_fault_is_a_panic() {
    if !kvm_available() {
        return;
    }
    // ud2 with an empty IDT: #UD -> #GP -> #DF -> triple fault -> KVM_EXIT_SHUTDOWN.
    let (exit, m) = run(&[0x0f, 0x0b], |_| {});
    assert_eq!(exit, VmExit::Panic, "{m:?}");
}

#[test]
fn guest_reads_virtio_mmio_magic() {
    if !kvm_available() {
        return;
    }
    let code = [
        0xa1, 0x00, 0x00, 0x00, 0xd0, // mov eax, [0xd0000000]
        0x3d, 0x76, 0x69, 0x72, 0x74, // cmp eax, "virt"
        0x75, 0x04, // jne +4
        0xb0, 0x01, // mov al, 1
        0xeb, 0x02, // jmp +2
        0xb0, 0x02, // mov al, 2
        0xe6, 0xf4, // out 0xf4, al
        0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
    ];
    let (exit, m) = run(&code, |c| c.rng = true);
    assert_eq!(
        exit,
        VmExit::Poweroff,
        "magic value read through the MMIO bus"
    );
    assert!(m.userspace_exits["mmio_read"] >= 1);
}

#[test]
fn stop_from_another_thread() {
    if !kvm_available() {
        return;
    }
    let kernel = pvh_elf(&[0xeb, 0xfe]); // jmp $
    let mut config = VmConfig::new(kernel.as_path());
    config.mem_mib = 32;
    config.vcpus = 2;
    let vm = std::sync::Arc::new(Vmm::start(config).unwrap());
    let vm2 = vm.clone();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        vm2.stop();
    });
    assert_eq!(vm.wait(), VmExit::Stopped);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "teardown took {:?}",
        t0.elapsed()
    );
    assert_eq!(vm.wait(), VmExit::Stopped, "wait is idempotent");
}

#[test]
fn not_a_pvh_kernel() {
    if !kvm_available() {
        return;
    }
    let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
    t.as_file().write_all(&[0u8; 4096]).unwrap();
    let mut config = VmConfig::new(t.as_path());
    config.mem_mib = 32;
    let e = Vmm::start(config).err().unwrap();
    assert!(e.to_string().starts_with("not a PVH vmlinux"), "{e}");
}
