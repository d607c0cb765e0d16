//! `rng`: the entropy device's one queue under a malicious driver.

use arbitrary::Arbitrary;
use vpod_vmm::devices::virtio::rng::Rng;

use crate::driver::{DriverOp, Fixture, QueueSetup};

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub queue: QueueSetup,
    pub ops: Vec<DriverOp>,
}

pub fn run(input: &Input) {
    let Ok(dev) = Rng::new() else { return };
    let Some(mut f) = Fixture::new(dev, u64::MAX, &[input.queue]) else {
        return;
    };
    for op in &input.ops {
        f.apply(op);
    }
    f.finish();
}
