//! Legacy PC devices on the PIO bus: COM1 serial, i8042 (reset only), the exit announce port.
pub mod exit_port;
pub mod i8042;
pub mod serial;

pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::{PanicWatcher, SerialDevice};

use vmm_sys_util::eventfd::EventFd;

/// An irqfd as a vm-superio interrupt trigger.
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
