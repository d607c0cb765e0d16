//! `mmio`: the virtio-mmio transport as the guest sees it (register reads and writes of any
//! width at any offset, the status handshake, queue setup, notifications, resets) over a real
//! device (rng, or block on a memfd disk) running in an event manager, with the guest's memory
//! written by the same malicious driver as the device targets.

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vpod_vmm::devices::bus::BusDevice;
use vpod_vmm::devices::virtio::block::Block;
use vpod_vmm::devices::virtio::rng::Rng;
use vpod_vmm::devices::virtio::transport::mmio::*;
use vpod_vmm::devices::virtio::VirtioDevice;

use crate::driver::{guest_memory, standard_ring, Driver, DriverOp, QueueSetup, RUN_TURNS};

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Rng,
    Block { read_only: bool },
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `offset % 0x200`, width 1, 2, 4 or 8 (`width % 4`).
    Read {
        offset: u16,
        width: u8,
    },
    Write {
        offset: u16,
        width: u8,
        value: u64,
    },
    /// ACKNOWLEDGE, DRIVER, the features (VERSION_1 added), FEATURES_OK, as a driver does.
    Handshake {
        features: u64,
    },
    /// Programs queue `q` (QueueSel) with the driver's standard layout and size, and readies it.
    Queue {
        q: u8,
        setup: QueueSetup,
    },
    /// Status |= DRIVER_OK (activates the device).
    DriverOk,
    /// Status 0, and the driver forgets its rings.
    Reset,
    /// Guest memory and rings; `Kick` writes QueueNotify, `Run` runs the event loop.
    Driver(DriverOp),
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub device: Device,
    pub ops: Vec<Op>,
}

const WIDTHS: [usize; 4] = [1, 2, 4, 8];

struct Guest<D: VirtioDevice + MutEventSubscriber + 'static> {
    em: EventManager<Arc<Mutex<D>>>,
    mmio: MmioTransport,
    driver: Driver,
    nqueues: usize,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Guest<D> {
    fn reg(&mut self, offset: u64, v: u32) {
        self.mmio.write(offset, &v.to_le_bytes());
    }

    fn status(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(REG_STATUS, &mut b);
        u32::from_le_bytes(b)
    }

    fn run(&mut self) {
        for _ in 0..RUN_TURNS {
            match self.em.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = self.mmio.interrupt().irqfd().read();
    }

    fn rings(&mut self) {
        self.driver.rings = (0..self.nqueues).map(|q| standard_ring(q, 16)).collect();
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Read { offset, width } => {
                let mut b = [0u8; 8];
                let n = WIDTHS[usize::from(width % 4)];
                self.mmio.read(u64::from(offset % 0x200), &mut b[..n]);
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let n = WIDTHS[usize::from(width % 4)];
                self.mmio
                    .write(u64::from(offset % 0x200), &value.to_le_bytes()[..n]);
            }
            Op::Handshake { features } => {
                let features = features | 1 << 32;
                self.reg(REG_STATUS, 1);
                self.reg(REG_STATUS, 3);
                for sel in 0..2 {
                    self.reg(REG_DRIVER_FEATURES_SEL, sel);
                    self.reg(REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
                }
                self.reg(REG_STATUS, 11);
            }
            Op::Queue { q, setup } => {
                if self.nqueues == 0 {
                    return;
                }
                let q = usize::from(*q) % self.nqueues;
                let ring = standard_ring(q, setup.size());
                self.reg(REG_QUEUE_SEL, q as u32);
                self.reg(REG_QUEUE_NUM, u32::from(ring.size));
                for (lo, addr) in [
                    (REG_QUEUE_DESC_LOW, ring.desc),
                    (REG_QUEUE_DRIVER_LOW, ring.avail),
                    (REG_QUEUE_DEVICE_LOW, ring.used),
                ] {
                    self.reg(lo, addr as u32);
                    self.reg(lo + 4, (addr >> 32) as u32);
                }
                self.reg(REG_QUEUE_READY, 1);
                self.driver.rings[q] = ring;
            }
            Op::DriverOk => {
                let s = self.status();
                self.reg(REG_STATUS, s | 4);
                self.run();
            }
            Op::Reset => {
                self.reg(REG_STATUS, 0);
                self.rings();
                self.run();
            }
            Op::Driver(DriverOp::Kick { q }) => {
                self.reg(REG_QUEUE_NOTIFY, u32::from(*q) % 4);
                self.run();
            }
            Op::Driver(DriverOp::Run) => self.run(),
            Op::Driver(op) => self.driver.apply(op),
        }
    }
}

fn run_with<D: VirtioDevice + MutEventSubscriber + 'static>(dev: D, ops: &[Op]) {
    let nqueues = dev.queue_max_sizes().len();
    let dev = Arc::new(Mutex::new(dev));
    let Ok(mut em) = EventManager::<Arc<Mutex<D>>>::new() else {
        return;
    };
    em.add_subscriber(dev.clone());
    let mem = guest_memory();
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(mmio) = MmioTransport::new(dev, mem.clone(), irq) else {
        return;
    };
    let mut g = Guest {
        em,
        mmio,
        driver: Driver::new(mem, Vec::new()),
        nqueues,
    };
    g.rings();
    for op in ops {
        g.apply(op);
    }
    for q in 0..nqueues {
        g.reg(REG_QUEUE_NOTIFY, q as u32);
    }
    g.run();
    // Teardown as the VMM does it: a driver reset, then the device goes away.
    g.reg(REG_STATUS, 0);
    g.run();
}

pub fn run(input: &Input) {
    match input.device {
        Device::Rng => {
            if let Ok(dev) = Rng::new() {
                run_with(dev, &input.ops);
            }
        }
        Device::Block { read_only } => {
            let Some(disk) = crate::block::memfd_disk(8 * 512, read_only) else {
                return;
            };
            if let Ok(dev) = Block::new(disk) {
                run_with(dev, &input.ops);
            }
        }
    }
}
