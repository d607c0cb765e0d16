//! Parsing and executing one virtio-blk request. Every descriptor comes from the (untrusted) guest:
//! each check failing here fails only this request.

use std::io::{Seek, SeekFrom};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::device::DiskFile;
use crate::devices::virtio::GuestMemory;

/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// virtio-blk's sector: 512 bytes, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
const HEADER_LEN: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RequestHeader {
    type_: u32,
    _reserved: u32,
    sector: u64,
}
// SAFETY: plain old data with no padding (4 + 4 + 8 bytes).
unsafe impl ByteValued for RequestHeader {}

/// What a request asks for (the header's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN: read sectors into the guest's buffers.
    In,
    /// VIRTIO_BLK_T_OUT: write the guest's buffers to sectors.
    Out,
    /// VIRTIO_BLK_T_FLUSH: make earlier writes durable.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the disk's id string.
    GetId,
    /// Any other type (answered VIRTIO_BLK_S_UNSUPP).
    Unsupported(u32),
}

/// Why one request fails (the device answers it with [`RequestError::status`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A chain without descriptors.
    #[error("empty descriptor chain")]
    Empty,
    /// More descriptors than the queue has, or a loop.
    #[error("descriptor chain longer than the queue or looping")]
    ChainTooLong,
    /// Header only: nowhere to put the status.
    #[error("chain has no separate status descriptor")]
    TooShort,
    /// The header must be device-readable.
    #[error("header descriptor is device-writable")]
    HeaderWriteOnly,
    /// The header's length (it must be 16).
    #[error("header descriptor is {0} bytes, expected 16")]
    HeaderLen(u32),
    /// The status descriptor can't take the status byte.
    #[error("status descriptor is not a device-writable byte in guest memory")]
    BadStatus,
    /// A descriptor's buffer is not all in guest memory.
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// The descriptor's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A data buffer the device would have to read for IN or write for OUT.
    #[error("data descriptor has the wrong direction for this request")]
    WrongDirection,
    /// Data length in bytes, not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The sectors run past the end of the disk.
    #[error("sectors {sector}+{count} are beyond the disk's {capacity}")]
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Sectors asked for.
        count: u64,
        /// The disk's sectors.
        capacity: u64,
    },
    /// OUT on a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The host file failed.
    #[error("disk I/O: {0}")]
    Io(String),
    /// A request type we don't implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte the guest gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A validated request: what to do, where its data is, where its status goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What the request asks for.
    pub kind: RequestType,
    /// First sector.
    pub sector: u64,
    /// The data buffers (guest address, length), in chain order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Where to write the status of a request that failed to parse, if the chain has a usable one.
fn status_of(last: &Descriptor, mem: &GuestMemory) -> Option<GuestAddress> {
    (last.is_write_only() && last.len() >= 1 && mem.check_range(last.addr(), 1))
        .then_some(last.addr())
}

/// A failed parse: the error, and where (if anywhere) its status byte can go.
pub type ParseFailure = (RequestError, Option<GuestAddress>);

impl Request {
    /// Validates a chain (already bounded to `queue size` descriptors by the chain iterator).
    pub fn parse(
        descs: impl Iterator<Item = Descriptor>,
        mem: &GuestMemory,
        capacity: u64,
    ) -> Result<Request, ParseFailure> {
        let descs: Vec<Descriptor> = descs.collect();
        let last = descs.last().ok_or((RequestError::Empty, None))?;
        let status = status_of(last, mem);
        // The iterator stops at the queue size (or an out-of-table `next`) with NEXT still set.
        if last.has_next() {
            return Err((RequestError::ChainTooLong, status));
        }
        if descs.len() < 2 {
            return Err((RequestError::TooShort, status));
        }
        let status_addr = status.ok_or((RequestError::BadStatus, None))?;
        let fail = |e| Err((e, Some(status_addr)));

        let head = &descs[0];
        if head.is_write_only() {
            return fail(RequestError::HeaderWriteOnly);
        }
        if head.len() != HEADER_LEN {
            return fail(RequestError::HeaderLen(head.len()));
        }
        let Ok(header) = mem.read_obj::<RequestHeader>(head.addr()) else {
            return fail(RequestError::OutOfMemory {
                addr: head.addr().0,
                len: head.len(),
            });
        };
        let kind = match u32::from_le(header.type_) {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            t => RequestType::Unsupported(t),
        };
        let sector = u64::from_le(header.sector);

        let data_descs = &descs[1..descs.len() - 1];
        let mut data = Vec::with_capacity(data_descs.len());
        let mut total: u64 = 0;
        for d in data_descs {
            if !mem.check_range(d.addr(), d.len() as usize) {
                return fail(RequestError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
            let device_reads = kind == RequestType::Out;
            if (device_writes && !d.is_write_only()) || (device_reads && d.is_write_only()) {
                return fail(RequestError::WrongDirection);
            }
            total += u64::from(d.len());
            data.push((d.addr(), d.len()));
        }

        match kind {
            RequestType::In | RequestType::Out => {
                if !total.is_multiple_of(SECTOR_SIZE) {
                    return fail(RequestError::Unaligned(total));
                }
                let count = total >> SECTOR_SHIFT;
                if sector.checked_add(count).is_none_or(|end| end > capacity) {
                    return fail(RequestError::OutOfRange {
                        sector,
                        count,
                        capacity,
                    });
                }
            }
            RequestType::Unsupported(t) => return fail(RequestError::Unsupported(t)),
            RequestType::Flush | RequestType::GetId => {}
        }
        Ok(Request {
            kind,
            sector,
            data,
            status: status_addr,
        })
    }

    /// Runs the request; returns how many bytes were written into guest buffers (status excluded).
    pub fn execute(&self, disk: &mut DiskFile, mem: &GuestMemory) -> Result<u32, RequestError> {
        let io = |e: &dyn std::fmt::Display| RequestError::Io(e.to_string());
        match self.kind {
            RequestType::In | RequestType::Out => {
                if self.kind == RequestType::Out && disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let file = &mut disk.file;
                file.seek(SeekFrom::Start(self.sector << SECTOR_SHIFT))
                    .map_err(|e| io(&e))?;
                let mut written = 0u32;
                for (addr, len) in &self.data {
                    if self.kind == RequestType::In {
                        mem.read_exact_volatile_from(*addr, file, *len as usize)
                            .map_err(|e| io(&e))?;
                        written += len;
                    } else {
                        mem.write_all_volatile_to(*addr, file, *len as usize)
                            .map_err(|e| io(&e))?;
                    }
                }
                Ok(written)
            }
            RequestType::Flush => {
                if !disk.read_only {
                    disk.file.sync_data().map_err(|e| io(&e))?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut id = &disk.id[..VIRTIO_BLK_ID_BYTES as usize];
                let mut written = 0u32;
                for (addr, len) in &self.data {
                    let n = (*len as usize).min(id.len());
                    mem.write_slice(&id[..n], *addr).map_err(|e| io(&e))?;
                    id = &id[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
        }
    }
}

/// The status byte of a request that succeeded.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
