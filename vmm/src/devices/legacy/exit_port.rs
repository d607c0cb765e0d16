//! Port 0xf4, one byte: the guest's init announces how it is about to end (1 = poweroff,
//! 2 = reboot) right before reboot(2). Without ACPI the kernel can only reset the CPU, so this
//! byte is what tells a poweroff from a reboot.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::ExitSignal;

pub struct ExitPort {
    exit: Arc<ExitSignal>,
}

impl ExitPort {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 1 {
            self.exit.announce(data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitEvent, VmExit};

    #[test]
    fn announce_then_reset_is_poweroff() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut port = ExitPort::new(exit.clone());
        port.write(0, &[1, 0]); // wrong size: ignored
        port.write(0, &[2]);
        port.write(0, &[1]);
        exit.signal(ExitEvent::Reset);
        assert_eq!(exit.wait(), VmExit::Poweroff);
    }
}
