//! The pod's empty disk slots: a container created after boot gets its image disk through one
//! (the VMM swaps the slot's backing file and the guest re-reads the disk).

use std::sync::Mutex;

use crate::vmm_process::VmProcess;

use super::config::ImageDisk;
use super::error::PodError;

/// One slot: the VM's disk `index`, and the image it holds.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) serial: Option<String>,
}

/// The pod's slots.
#[derive(Debug)]
pub(crate) struct Slots(Mutex<Vec<Slot>>);

impl Slots {
    pub(crate) fn new(slots: Vec<Slot>) -> Slots {
        Slots(Mutex::new(slots))
    }

    /// Puts `img` into a free slot of `vm`, unless a slot holds it already.
    pub(crate) fn attach(
        &self,
        pod: &str,
        vm: &VmProcess,
        img: &ImageDisk,
    ) -> Result<(), PodError> {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slots
            .iter()
            .any(|s| s.serial.as_deref() == Some(&img.serial))
        {
            return Ok(());
        }
        let n = slots.len();
        let slot = slots
            .iter_mut()
            .find(|s| s.serial.is_none())
            .ok_or_else(|| PodError::NoSlot {
                id: pod.into(),
                serial: img.serial.clone(),
                slots: n,
            })?;
        vm.swap_disk(slot.index, &img.path, Some(&img.serial))
            .map_err(|source| PodError::Slot {
                id: pod.into(),
                source,
            })?;
        slot.serial = Some(img.serial.clone());
        Ok(())
    }
}
