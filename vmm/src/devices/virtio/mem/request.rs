//! The request queue's wire format (virtio 1.2 §5.15.6): `struct virtio_mem_req` in the
//! device-readable part of a chain, `struct virtio_mem_resp` in the device-writable part.

/// Request types.
pub const REQ_PLUG: u16 = 0;
/// Unplug blocks.
pub const REQ_UNPLUG: u16 = 1;
/// Unplug every block.
pub const REQ_UNPLUG_ALL: u16 = 2;
/// Report blocks' state.
pub const REQ_STATE: u16 = 3;

/// Response types.
pub const RESP_ACK: u16 = 0;
/// The request is valid but not granted now (plugging past `requested_size`).
pub const RESP_NACK: u16 = 1;
/// The request is invalid (range outside the usable region, unaligned, blocks in the wrong
/// state).
pub const RESP_ERROR: u16 = 3;

/// STATE answers.
pub const STATE_PLUGGED: u16 = 0;
/// Every block of the range is unplugged.
pub const STATE_UNPLUGGED: u16 = 1;
/// Some are, some aren't.
pub const STATE_MIXED: u16 = 2;

/// `struct virtio_mem_req`: type, 3 × padding, then (for PLUG, UNPLUG, STATE) addr, nb_blocks.
pub const REQ_SIZE: usize = 24;
/// `struct virtio_mem_resp`: type, 3 × padding, then (for STATE) the state.
pub const RESP_SIZE: usize = 10;

/// One request, as read from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Plug `nb_blocks` from `addr`.
    Plug {
        /// Guest physical address of the first block.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// Unplug `nb_blocks` from `addr`.
    Unplug {
        /// Guest physical address of the first block.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// Unplug every block.
    UnplugAll,
    /// The state of `nb_blocks` from `addr`.
    State {
        /// Guest physical address of the first block.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// A type this device does not know.
    Unknown(u16),
}

impl Request {
    /// Decodes the request bytes (little endian, virtio 1.x); `None` if too short.
    pub fn parse(b: &[u8]) -> Option<Request> {
        let ty = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?);
        if ty == REQ_UNPLUG_ALL {
            return Some(Request::UnplugAll);
        }
        let addr = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        let nb_blocks = u16::from_le_bytes(b.get(16..18)?.try_into().ok()?);
        Some(match ty {
            REQ_PLUG => Request::Plug { addr, nb_blocks },
            REQ_UNPLUG => Request::Unplug { addr, nb_blocks },
            REQ_STATE => Request::State { addr, nb_blocks },
            other => Request::Unknown(other),
        })
    }
}

/// A response's bytes: `ty`, and for STATE its `state`.
pub fn response(ty: u16, state: u16) -> [u8; RESP_SIZE] {
    let mut b = [0u8; RESP_SIZE];
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[8..10].copy_from_slice(&state.to_le_bytes());
    b
}

/// A request's bytes (tests and the fuzzer build requests with it).
pub fn encode(ty: u16, addr: u64, nb_blocks: u16) -> [u8; REQ_SIZE] {
    let mut b = [0u8; REQ_SIZE];
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_short_ones_are_refused() {
        let b = encode(REQ_PLUG, 0x1_0000_0000, 7);
        assert_eq!(
            Request::parse(&b),
            Some(Request::Plug {
                addr: 0x1_0000_0000,
                nb_blocks: 7
            })
        );
        assert_eq!(
            Request::parse(&encode(REQ_UNPLUG_ALL, 0, 0)[..2]),
            Some(Request::UnplugAll)
        );
        assert_eq!(Request::parse(&b[..17]), None);
        assert_eq!(Request::parse(&[]), None);
        assert_eq!(Request::parse(&encode(9, 0, 0)), Some(Request::Unknown(9)));
        assert_eq!(response(RESP_ACK, STATE_MIXED)[8..10], [2, 0]);
    }
}
