//! Legacy PC devices on the PIO bus: COM1 serial, i8042 (the reboot line) and the reset control
//! register at 0xCF9 (the poweroff line).
pub mod i8042;
pub mod reset_control;
pub mod serial;

pub use i8042::I8042;
pub use reset_control::ResetControl;
pub use serial::{PanicWatcher, SerialDevice};

use vmm_sys_util::eventfd::EventFd;

/// An irqfd as a vm-superio interrupt trigger.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
