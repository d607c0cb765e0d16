//! The i8042 keyboard controller, only for its CPU reset line: a 0xFE write to port 0x64 is how the
//! kernel reboots with `reboot=k`.

use std::sync::Arc;

use vm_superio::I8042Device;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitEvent, ExitSignal};

/// The i8042's CPU reset line: ends the VM as a reset (a reboot, unless a panic was seen).
#[derive(Debug)]
pub struct ResetTrigger(Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(ExitEvent::Reset);
        Ok(())
    }
}

/// Covers ports 0x60..=0x64.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller whose reset line reports to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset <= 4 {
            data[0] = self.dev.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset <= 4 {
            let Ok(()) = self.dev.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_on_fe_to_command_port() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert_eq!(exit.event(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.event(), Some(ExitEvent::Reset));
    }
}
