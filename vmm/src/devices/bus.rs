//! PIO and MMIO buses: address ranges -> devices. Built once, then shared read-only by vCPU threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::latch::WarnLatch;
use crate::devices::latch::latched_warn;

const UNMAPPED_READ: u32 = 0;
const UNMAPPED_WRITE: u32 = 1;

/// A device on a bus. `offset` is relative to the device's base address.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device can't be put on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range (base, len) overlaps a device already there.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A range of length 0 (at this base).
    #[error("empty bus range at {0:#x}")]
    Empty(u64),
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// Address ranges, each with its device.
#[derive(Default)]
pub struct Bus {
    /// base -> (len, device)
    devices: BTreeMap<u64, Entry>,
    /// Guest accesses where no device is: warned about once per bus and direction.
    unmapped: WarnLatch,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Devices are `dyn BusDevice`: their ranges say what the bus holds.
        let ranges: Vec<_> = self
            .devices
            .iter()
            .map(|(base, (len, _))| *base..base + len)
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `base..base + len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((b, (l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` into it.
    fn resolve(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Returns false if nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                latched_warn!(
                    self.unmapped,
                    UNMAPPED_READ,
                    "guest read of {} bytes at {addr:#x}: no device there",
                    data.len()
                );
                false
            }
        }
    }

    /// Returns false if nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                latched_warn!(
                    self.unmapped,
                    UNMAPPED_WRITE,
                    "guest write of {} bytes at {addr:#x}: no device there",
                    data.len()
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routing_and_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x10, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x17, 2),
            Err(BusError::Overlap { base: 0x17, len: 2 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x8, 9),
            Err(BusError::Overlap { base: 0x8, len: 9 })
        );
        assert_eq!(bus.insert(dev.clone(), 0x0, 0), Err(BusError::Empty(0)));
        bus.insert(dev.clone(), 0x18, 1).unwrap();
        bus.insert(dev.clone(), 0x8, 8).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(!bus.read(0x19, &mut b));
        assert!(!bus.read(0x7, &mut b));
        assert!(bus.write(0x18, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, 9)]);
        assert!(!bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn unmapped_accesses_warn_once() {
        use crate::devices::latch::tests::{captured_logs, count};
        let bus = Bus::new();
        let logs = captured_logs(|| {
            let mut b = [0u8; 4];
            for i in 0..50 {
                assert!(!bus.read(0x1000 + i, &mut b));
                assert!(!bus.write(0x2000 + i, &b));
            }
        });
        assert_eq!(count(&logs, "no device there"), (2, 98), "{logs}");
    }
}
