//! An irqfd as the interrupt line of a vm-superio device.

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
