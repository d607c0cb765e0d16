//! Real KVM runs of tiny hand-assembled PVH "kernels": the full path from ELF loading through
//! vCPU setup, PIO/MMIO exits, legacy devices and exit decisions. Needs /dev/kvm (skipped without).

use std::io::Write;
use std::time::{Duration, Instant};

use vpod_vmm::{Console, VmConfig, VmExit, Vmm};

mod common;
use common::*;

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
fn poweroff_and_reboot_lines() {
    if !kvm_available() {
        return;
    }
    let (exit, m) = run(POWEROFF, |_| {});
    assert_eq!(exit, VmExit::Poweroff, "a CF9 reset is a poweroff");
    assert!(m.start_to_first_kvm_run_us.is_some());
    assert!(m.userspace_exits["io_out"] >= 2, "{m:?}");
    let (exit, _) = run(RESET, |_| {});
    assert_eq!(exit, VmExit::Reboot, "an i8042 reset is a reboot");
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
    let mut code = vec![
        0xa1,
        0x00,
        0x00,
        0x00,
        0xd0, // mov eax, [0xd0000000]
        0x3d,
        0x76,
        0x69,
        0x72,
        0x74, // cmp eax, "virt"
        0x75,
        POWEROFF.len() as u8, // jne over the poweroff: reset (a reboot)
    ];
    code.extend_from_slice(POWEROFF);
    code.extend_from_slice(RESET);
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

#[test]
fn console_file_is_capped_whatever_the_guest_writes() {
    if !kvm_available() {
        return;
    }
    assert_eq!(VmConfig::new("k").console_limit, 1 << 20, "default cap");
    // 96 KiB of 'x' to COM1 against a 64 KiB cap, then reset.
    let n: u32 = 96 << 10;
    let limit = 64 << 10;
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    code.push(0xb9); // mov ecx, n
    code.extend_from_slice(&n.to_le_bytes());
    // 1: mov al,'x'; out dx,al; dec ecx; jnz 1b
    code.extend_from_slice(&[0xb0, b'x', 0xee, 0x49, 0x75, 0xfa]);
    code.extend_from_slice(RESET);
    let out = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let path = out.as_path().to_path_buf();
    let (exit, m) = run(&code, |c| {
        c.console = Console::File(path.clone());
        c.console_limit = limit;
    });
    assert_eq!(exit, VmExit::Reboot);
    let content = std::fs::read(&path).unwrap();
    assert_eq!(content.len() as u64, limit, "console file capped");
    let marker = vpod_vmm::devices::legacy::serial::TRUNCATED_MARKER;
    assert!(content.ends_with(marker));
    assert_eq!(
        m.console_bytes_dropped,
        u64::from(n) - (limit - marker.len() as u64),
        "{m:?}"
    );
}

#[test]
fn kernel_halt_on_the_console_is_a_poweroff() {
    if !kvm_available() {
        return;
    }
    // What reboot(RB_POWER_OFF) does without ACPI: the kernel says so, then halts for ever.
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"[    0.5] reboot: System halted\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; 1: hlt; jmp 1b
    let started = Instant::now();
    let (exit, _) = run(&code, |_| {});
    assert_eq!(exit, VmExit::Poweroff);
    assert!(started.elapsed() < Duration::from_secs(30));
}
