//! Legacy PC devices on the PIO bus: COM1 serial, i8042 (the reboot line) and the reset control
//! register at 0xCF9 (the poweroff line).
pub mod i8042;
pub mod irq;
pub mod reset_control;
pub mod serial;

pub use i8042::I8042;
pub use irq::IrqTrigger;
pub use reset_control::ResetControl;
pub use serial::{PanicWatcher, SerialDevice};
