//! The reset control register at port 0xCF9: how a vpod guest powers off.
//!
//! With no ACPI and no firmware, a microVM guest's kernel can only reset the CPU. vpod's guests
//! tell the two ends apart by the reset line they pull, both from kernel code (so the guest needs
//! no I/O port access from user space, and its kernel has `X86_IOPL_IOPERM` off):
//! - reboot: the i8042 reset (`reboot=k` on the command line, [`super::I8042`]);
//! - poweroff: vpod-init selects the kernel's `pci` reboot method (`/sys/kernel/reboot/type`)
//!   right before `reboot(2)`, so the kernel writes RST_CPU to this register.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitEvent, ExitSignal};

/// Bit 2 of the register: "reset the CPU" (bit 1, the kind of reset, comes first on its own).
const RST_CPU: u8 = 1 << 2;

/// One byte at 0xCF9; a write with bit 2 (RST_CPU) set ends the VM as a poweroff.
#[derive(Debug)]
pub struct ResetControl {
    exit: Arc<ExitSignal>,
    value: u8,
}

impl ResetControl {
    /// A register that reports to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit, value: 0 }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The kernel reads the register first and keeps its other bits; RST_CPU never sticks.
        let v = if offset == 0 {
            self.value & !RST_CPU
        } else {
            0
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() != 1 {
            return;
        }
        self.value = data[0];
        if data[0] & RST_CPU != 0 {
            self.exit.signal(ExitEvent::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::VmExit;

    #[test]
    fn the_kernels_cf9_sequence_is_a_poweroff() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut reg = ResetControl::new(exit.clone());
        let mut b = [0xffu8];
        reg.read(0, &mut b);
        assert_eq!(b, [0]);
        reg.write(0, &[0x02]); // SYS_RST alone: the kind of reset, no reset yet
        assert_eq!(exit.event(), None);
        reg.write(0, &[0x06, 0]); // wrong size: ignored
        reg.write(1, &[0x06]); // wrong offset: ignored
        assert_eq!(exit.event(), None);
        reg.read(0, &mut b);
        assert_eq!(b, [0x02]);
        reg.write(0, &[0x06]); // warm reset: RST_CPU
        assert_eq!(exit.event(), Some(ExitEvent::PowerOff));
        assert_eq!(exit.wait(), VmExit::Poweroff);
    }

    #[test]
    fn a_panic_that_ends_through_cf9_is_still_the_poweroff_init_asked_for() {
        // vpod-init picked the CF9 method, then reboot(2) failed and PID 1's exit panicked the
        // kernel, whose emergency restart uses the same method.
        let exit = Arc::new(ExitSignal::new().unwrap());
        exit.set_panic_seen();
        ResetControl::new(exit.clone()).write(0, &[0x0e]);
        assert_eq!(exit.wait(), VmExit::Poweroff);
    }
}
