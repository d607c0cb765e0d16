//! Powering the guest off or rebooting it (PID 1 only).
//!
//! Without ACPI the kernel can't switch a microVM off, so the VMM reads the
//! guest's intent from what the kernel does: `reboot(RB_POWER_OFF)` prints
//! "reboot: Power down" on the console and halts (the VMM ends the VM as a
//! poweroff); `reboot(RB_AUTOBOOT)` resets through the keyboard controller
//! (`reboot=k`), which the VMM ends as a reboot. No user-space port I/O is
//! needed, so the guest kernel is built without X86_IOPL_IOPERM and no
//! process in the guest, however privileged, can touch an I/O port.

use std::io::{self, Write};

use nix::sys::reboot::{reboot, RebootMode};
use vpod_agent_api::pb::ShutdownKind;

/// The reboot(2) mode that ends the VM as `kind`.
pub fn mode(kind: ShutdownKind) -> RebootMode {
    match kind {
        ShutdownKind::Poweroff => RebootMode::RB_POWER_OFF,
        ShutdownKind::Reboot => RebootMode::RB_AUTOBOOT,
    }
}

/// Syncs and powers the guest off or resets it. Never returns: if the
/// kernel refuses, PID 1 exits, which panics the kernel, and `panic=-1`
/// resets the VM.
pub fn go_down(kind: ShutdownKind) -> ! {
    nix::unistd::sync();
    let err = match reboot(mode(kind)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = writeln!(io::stderr(), "vpod-init: reboot failed: {err}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_halts_and_reboot_resets() {
        // The VMM tells them apart by these two kernel paths alone (no announce port).
        assert_eq!(mode(ShutdownKind::Poweroff), RebootMode::RB_POWER_OFF);
        assert_eq!(mode(ShutdownKind::Reboot), RebootMode::RB_AUTOBOOT);
    }
}
