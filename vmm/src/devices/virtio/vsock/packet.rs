//! Vsock packet headers as the device sees them.
//!
//! Parsing of descriptor chains is rust-vmm's `virtio_vsock::packet::VsockPacket` (it checks
//! directions, header size, `len` against the data buffer and the maximum payload). This module
//! copies a parsed header into an owned [`Header`] (so later reads can't race with the guest
//! rewriting its memory) and writes one back into an rx buffer.

use virtio_vsock::packet::VsockPacket;

/// virtio-vsock protocol constants (virtio spec 5.10.6, `linux/virtio_vsock.h`): the stream
/// socket type.
pub const VSOCK_TYPE_STREAM: u16 = 1;

/// Operation: open a connection.
pub const VSOCK_OP_REQUEST: u16 = 1;
/// Accept a connection.
pub const VSOCK_OP_RESPONSE: u16 = 2;
/// Refuse or tear down a connection.
pub const VSOCK_OP_RST: u16 = 3;
/// Stop receiving and/or sending (see the SHUTDOWN flags).
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
/// Payload.
pub const VSOCK_OP_RW: u16 = 5;
/// The sender's buffer space (`buf_alloc`, `fwd_cnt`).
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a CREDIT_UPDATE.
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const VSOCK_FLAGS_SHUTDOWN_BOTH: u32 = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;

/// Well-known CID of the host.
pub const VSOCK_HOST_CID: u64 = 2;

/// Largest payload accepted in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

pub use virtio_vsock::packet::PKT_HEADER_SIZE;

/// An owned copy of a `virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes.
    pub len: u32,
    /// Socket type (only [`VSOCK_TYPE_STREAM`]).
    pub type_: u16,
    /// One of VSOCK_OP_*.
    pub op: u16,
    /// SHUTDOWN flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl Header {
    /// Copies the header that `VsockPacket` read (once) from guest memory.
    pub fn from_packet(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Writes every header field into an rx packet.
    pub fn write_to(&self, pkt: &mut VsockPacket<'_, ()>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }

    /// The RST answering `pkt` (source and destination swapped).
    pub fn rst_reply(pkt: &Header) -> Self {
        Self {
            src_cid: pkt.dst_cid,
            dst_cid: pkt.src_cid,
            src_port: pkt.dst_port,
            dst_port: pkt.src_port,
            type_: VSOCK_TYPE_STREAM,
            op: VSOCK_OP_RST,
            ..Default::default()
        }
    }

    /// Serialises the header in wire format (little endian, packed); used by tests and tools.
    pub fn to_bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire format; `None` if `b` is shorter than a header.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; PKT_HEADER_SIZE] = b.get(..PKT_HEADER_SIZE)?.try_into().ok()?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Some(Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_size() {
        assert_eq!(PKT_HEADER_SIZE, 44);
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 17,
            type_: VSOCK_TYPE_STREAM,
            op: VSOCK_OP_RW,
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 99,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(Header::from_bytes(&[0u8; 43]), None);
    }

    #[test]
    fn rst_reply_swaps_endpoints() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5,
            dst_port: 6,
            op: VSOCK_OP_RW,
            len: 10,
            ..Default::default()
        };
        let r = Header::rst_reply(&h);
        assert_eq!((r.src_cid, r.dst_cid, r.src_port, r.dst_port), (2, 3, 6, 5));
        assert_eq!((r.op, r.len, r.type_), (VSOCK_OP_RST, 0, VSOCK_TYPE_STREAM));
    }
}
