//! `kvm-smoke`: the smallest proof that /dev/kvm runs guest code.
//!
//! Creates a VM with one page of memory, runs a few real-mode instructions that compute 2 + 3 and
//! write the digit to port 0x3f8, then HLT; checks that the port write carried '5' and that the vCPU
//! stopped on HLT. Exit 0 and `KVM_SMOKE_OK` when all of that holds.

use std::process::ExitCode;

use kvm_ioctls::{Kvm, VcpuExit};

const GUEST_ADDR: u64 = 0x1000;

// mov dx, 0x3f8; add al, bl; add al, '0'; out dx, al; hlt
const CODE: &[u8] = &[0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, b'0', 0xee, 0xf4];

fn smoke() -> Result<String, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let size = 0x1000usize;
    // SAFETY: a fresh anonymous private mapping; checked for MAP_FAILED below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `mem` is a writable mapping of `size` bytes and CODE is shorter.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem as *mut u8, CODE.len()) };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region maps memory we own for the lifetime of the VM (never unmapped before exit).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: GUEST_ADDR,
        rax: 2,
        rbx: 3,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let mut out = Vec::new();
    for _ in 0..16 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(0x3f8, data) => out.extend_from_slice(data),
            VcpuExit::Hlt => {
                return if out == b"5" {
                    Ok(format!(
                        "guest wrote {:?} to 0x3f8 and halted",
                        String::from_utf8_lossy(&out)
                    ))
                } else {
                    Err(format!("guest halted but wrote {out:?}, expected \"5\""))
                };
            }
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("guest did not halt".into())
}

fn main() -> ExitCode {
    match smoke() {
        Ok(msg) => {
            println!("{msg}\nKVM_SMOKE_OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvm-smoke: {e}");
            ExitCode::FAILURE
        }
    }
}
