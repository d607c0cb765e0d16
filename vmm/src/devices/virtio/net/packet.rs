//! Moving frames between descriptor chains and host buffers, validating every descriptor (the
//! guest is untrusted: wrong directions, bad addresses, oversized chains fail the frame only).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryError};

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::device::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("device-writable descriptor in a tx chain")]
    WriteOnlyTx,
    #[error("device-readable descriptor in an rx chain")]
    ReadOnlyRx,
    #[error("tx chain longer than {0} bytes")]
    TxTooLong(usize),
    #[error("tx chain of {0} bytes is shorter than the virtio-net header")]
    TxTooShort(usize),
    #[error("frame of {frame} bytes doesn't fit an rx chain of {capacity} bytes")]
    RxTooSmall { frame: usize, capacity: usize },
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Gathers a tx chain (virtio-net header + frame, all device-readable) into `buf`.
pub fn read_tx_chain<M>(
    chain: &mut DescriptorChain<M>,
    mem: &GuestMemory,
    buf: &mut [u8],
) -> Result<usize, FrameError>
where
    M: Deref<Target = GuestMemory>,
{
    let mut total = 0usize;
    // The chain iterator stops at the queue size, so a looping chain ends here too.
    for desc in chain {
        if desc.is_write_only() {
            return Err(FrameError::WriteOnlyTx);
        }
        let len = desc.len() as usize;
        let end = total
            .checked_add(len)
            .filter(|&end| end <= buf.len())
            .ok_or(FrameError::TxTooLong(buf.len()))?;
        mem.read_slice(&mut buf[total..end], desc.addr())?;
        total = end;
    }
    if total < VNET_HDR_LEN {
        return Err(FrameError::TxTooShort(total));
    }
    Ok(total)
}

/// Scatters `frame` (virtio-net header + frame) into an rx chain of device-writable buffers.
pub fn write_rx_chain<M>(
    chain: &mut DescriptorChain<M>,
    mem: &GuestMemory,
    frame: &[u8],
) -> Result<usize, FrameError>
where
    M: Deref<Target = GuestMemory>,
{
    let mut written = 0usize;
    let mut capacity = 0usize;
    for desc in chain {
        if written == frame.len() {
            break;
        }
        if !desc.is_write_only() {
            return Err(FrameError::ReadOnlyRx);
        }
        let len = desc.len() as usize;
        capacity = capacity.saturating_add(len);
        let n = len.min(frame.len() - written);
        mem.write_slice(&frame[written..written + n], desc.addr())?;
        written += n;
    }
    if written < frame.len() {
        return Err(FrameError::RxTooSmall {
            frame: frame.len(),
            capacity,
        });
    }
    Ok(written)
}
