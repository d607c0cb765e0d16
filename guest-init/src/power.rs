//! Powering the guest off or rebooting it (PID 1 only).
//!
//! The guest kernel runs with `reboot=k` and the VMM turns the resulting
//! reset into a VM exit; one byte written to an I/O port just before tells
//! it whether the guest meant poweroff or reboot (see
//! `vpod_agent_api::SHUTDOWN_ANNOUNCE_PORT`). Without ACPI there is no other
//! way for a microVM guest to power off.

use std::io::{self, Write};

use nix::sys::reboot::{reboot, RebootMode};
use vpod_agent_api::pb::ShutdownKind;
use vpod_agent_api::SHUTDOWN_ANNOUNCE_PORT;

/// Writes the announce byte for `kind`. Fails outside a vpod VM only in
/// harmless ways (no permission; nobody listens on the port).
pub fn announce(kind: ShutdownKind) -> io::Result<()> {
    outb(SHUTDOWN_ANNOUNCE_PORT, kind.announce_byte())
}

#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) -> io::Result<()> {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap; the
    // arguments are plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_ioperm, libc::c_ulong::from(port), 1, 1) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ioperm above granted access to exactly this port, so `out`
    // cannot fault; it touches no memory and no Rust-visible state.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn outb(_port: u16, _value: u8) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "shutdown announce port is x86-only",
    ))
}

/// Syncs, announces `kind` and resets the guest. Never returns: if the
/// kernel refuses the reboot, PID 1 exits, which panics the kernel, and
/// `panic=-1` resets the VM the same way.
pub fn go_down(kind: ShutdownKind) -> ! {
    nix::unistd::sync();
    // Not being in a vpod VM (or lacking CAP_SYS_RAWIO) must not stop us.
    let _ = announce(kind);
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = writeln!(io::stderr(), "vpod-init: reboot failed: {err}");
    std::process::exit(1)
}
