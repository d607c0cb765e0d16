//! `mem`: virtio-mem's request queue under a malicious driver, with well-formed requests mixed in
//! and the host changing the requested size in between. After every step the device's books must
//! hold: whole blocks plugged, never more than its region.

use arbitrary::Arbitrary;
use vpod_vmm::devices::virtio::mem::device::REGION_ALIGN;
use vpod_vmm::devices::virtio::mem::request::{encode, REQ_SIZE, RESP_SIZE};
use vpod_vmm::devices::virtio::mem::{HotplugRegion, Mem, BLOCK_SIZE};

use crate::driver::{DriverOp, Fixture, QueueSetup};

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Anything a driver does.
    Driver(DriverOp),
    /// A request of type `ty` for `nb` blocks from block `block` of the region (or `raw` as the
    /// address), with or without room for the answer; then a kick.
    Request {
        ty: u8,
        block: u16,
        nb: u16,
        raw: Option<u64>,
        answer: bool,
    },
    /// The host asks for `blocks` blocks in all.
    Resize { blocks: u16 },
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub queue: QueueSetup,
    pub ops: Vec<Op>,
}

pub fn run(input: &Input) {
    // 256 MiB at 4 GiB: outside the fixture's memory, so only the books are exercised there
    // (an unplug's discard finds no host mapping and does nothing).
    let Ok(region) = HotplugRegion::after_ram(0, 2 * REGION_ALIGN) else {
        return;
    };
    let Ok(dev) = Mem::new(region) else { return };
    let Some(mut f) = Fixture::new(dev, u64::MAX, &[input.queue]) else {
        return;
    };
    for op in &input.ops {
        match op {
            Op::Driver(op) => f.apply(op),
            Op::Request {
                ty,
                block,
                nb,
                raw,
                answer,
            } => {
                let addr = raw.unwrap_or(region.addr + u64::from(*block) * BLOCK_SIZE);
                let d = f.driver();
                let req = d.scratch(REQ_SIZE as u64);
                d.write(req, &encode(u16::from(*ty % 5), addr, *nb));
                let mut bufs = vec![(req, REQ_SIZE as u32, false)];
                if *answer {
                    bufs.push((d.scratch(RESP_SIZE as u64), RESP_SIZE as u32, true));
                }
                d.chain(0, &bufs);
                f.kick(0);
            }
            Op::Resize { blocks } => {
                let dev = f.device().clone();
                let mut dev = dev.lock().unwrap();
                let _ = dev.set_requested_size(u64::from(*blocks) * BLOCK_SIZE);
            }
        }
        let dev = f.device().clone();
        let dev = dev.lock().unwrap();
        assert_eq!(dev.plugged_size() % BLOCK_SIZE, 0);
        assert!(dev.plugged_size() <= region.size);
        assert!(dev.requested_size() <= region.size);
    }
    f.finish();
}
