//! `block`: virtio-blk's request queue under a malicious driver, over a memfd disk.

use std::os::fd::FromRawFd;

use arbitrary::Arbitrary;
use vpod_vmm::devices::virtio::block::{Block, DiskFile};

use crate::driver::{Buf, DriverOp, Fixture, QueueSetup};

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::In => 0,
            Kind::Out => 1,
            Kind::Flush => 4,
            Kind::GetId => 8,
            Kind::Other(t) => t,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Driver(DriverOp),
    /// A request as a driver builds it: header (16 bytes, device-readable), `data`, a status
    /// byte (device-writable); `status` false leaves the status descriptor off.
    Request {
        kind: Kind,
        sector: u64,
        data: Vec<Buf>,
        status: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub read_only: bool,
    /// Disk length in bytes is `(sectors % 65) * 512 + tail % 512`.
    pub sectors: u8,
    pub tail: u16,
    pub features: u64,
    pub queue: QueueSetup,
    pub ops: Vec<Op>,
}

pub(crate) fn memfd_disk(len: u64, read_only: bool) -> Option<DiskFile> {
    // SAFETY: memfd_create takes a NUL-terminated name; a fresh fd is returned or -1.
    let fd = unsafe { libc::memfd_create(c"vpod-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is ours and open.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).ok()?;
    let mut id = [0u8; 20];
    id[..11].copy_from_slice(b"vpod-fuzz-0");
    Some(DiskFile {
        file,
        path: "/fuzz/disk".into(),
        capacity: len >> 9,
        read_only,
        id,
    })
}

pub fn run(input: &Input) {
    let len = u64::from(input.sectors % 65) * 512 + u64::from(input.tail % 512);
    let Some(disk) = memfd_disk(len, input.read_only) else {
        return;
    };
    let Ok(dev) = Block::new(disk) else { return };
    let Some(mut f) = Fixture::new(dev, input.features, &[input.queue]) else {
        return;
    };
    for op in &input.ops {
        match op {
            Op::Driver(op) => f.apply(op),
            Op::Request {
                kind,
                sector,
                data,
                status,
            } => {
                let hdr = f.driver().scratch(16);
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&kind.code().to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                f.driver().write(hdr, &h);
                let mut chain = vec![(hdr, 16, false)];
                chain.extend(
                    data.iter()
                        .map(|b| (b.addr.get(), u32::from(b.len), b.write)),
                );
                if *status {
                    chain.push((f.driver().scratch(1), 1, true));
                }
                f.driver().chain(0, &chain);
                f.kick(0);
            }
        }
    }
    f.finish();
}
