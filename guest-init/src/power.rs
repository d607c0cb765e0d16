//! Powering the guest off or rebooting it (PID 1 only).
//!
//! Without ACPI a microVM's kernel can only reset the CPU, so the VMM tells a poweroff from a
//! reboot by the reset line the kernel pulls, and the kernel pulls it from kernel code: vpod-init
//! needs no I/O port access, and the guest kernel has `X86_IOPL_IOPERM` off.
//! - reboot: the kernel command line's `reboot=k` (the i8042 reset);
//! - poweroff: the `pci` method (a write to the reset control register, port 0xCF9), selected at
//!   run time through `/sys/kernel/reboot/type` just before `reboot(2)`.

use std::io::{self, Write};
use std::path::Path;

use nix::sys::reboot::{reboot, RebootMode};
use vpod_agent_api::pb::ShutdownKind;

/// The kernel's run-time choice of reset method (Linux 5.11+, sysfs).
const REBOOT_TYPE: &str = "/sys/kernel/reboot/type";

/// The reset method that tells the VMM what `kind` means.
fn reboot_type(kind: ShutdownKind) -> &'static str {
    match kind {
        ShutdownKind::Poweroff => "pci",
        ShutdownKind::Reboot => "kbd",
    }
}

/// Selects the kernel's reset method for `kind` by writing `file` (normally [`REBOOT_TYPE`]).
fn select_line(file: &Path, kind: ShutdownKind) -> io::Result<()> {
    std::fs::write(file, reboot_type(kind))
}

/// Syncs, selects the reset line for `kind` and resets the guest. Never returns.
///
/// If the method can't be selected, a poweroff falls back to `RB_POWER_OFF`: the kernel halts
/// and prints "reboot: System halted", which the VMM also reads as a poweroff. If the kernel
/// refuses the reboot, PID 1 exits, which panics the kernel, and `panic=-1` resets the VM on
/// the line already chosen.
pub fn go_down(kind: ShutdownKind) -> ! {
    nix::unistd::sync();
    let mode = match select_line(Path::new(REBOOT_TYPE), kind) {
        Ok(()) => RebootMode::RB_AUTOBOOT,
        Err(e) => {
            let _ = writeln!(io::stderr(), "vpod-init: {REBOOT_TYPE}: {e}");
            match kind {
                ShutdownKind::Poweroff => RebootMode::RB_POWER_OFF,
                ShutdownKind::Reboot => RebootMode::RB_AUTOBOOT,
            }
        }
    };
    let err = match reboot(mode) {
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
    fn each_kind_selects_its_own_reset_line() {
        let dir = tempfile_dir();
        let file = dir.join("type");
        select_line(&file, ShutdownKind::Poweroff).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "pci");
        select_line(&file, ShutdownKind::Reboot).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kbd");
        assert!(select_line(&dir.join("missing/type"), ShutdownKind::Poweroff).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vpod-power-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
