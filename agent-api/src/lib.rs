//! vpod-agent-api: the host <-> guest agent API of vpod.
//!
//! The guest's PID 1 (`vpod-init`) serves the `vpod.agent.v1.Agent` gRPC
//! service on virtio-vsock port [`AGENT_VSOCK_PORT`]; the host side (shim,
//! VMM tools, tests) reaches it through the VMM's vsock unix socket with
//! [`connect`] / [`connect_with_retry`].
//!
//! The protobuf types, the generated client ([`AgentClient`]) and the server
//! trait ([`Agent`], wrapped by [`AgentServer`]) come from `proto/agent.proto`.

mod client;
pub mod ready;

pub use client::{
    call_timeout, connect, connect_with_retry, connect_with_timeout, vsock_handshake, AgentChannel,
    Error, CALL_TIMEOUT_ENV, DEFAULT_CALL_TIMEOUT, HANDSHAKE_TIMEOUT,
};
pub use ready::{ReadyListener, AGENT_READY_PORT};

/// Generated protobuf messages, client and server for `vpod.agent.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("vpod.agent.v1");
}

pub use pb::agent_client::AgentClient;
pub use pb::agent_server::{Agent, AgentServer};

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Version of the API served by this build; reported in `Version`. Bumped
/// whenever RPCs or fields are added.
pub const API_VERSION: u32 = 2;

/// x86 I/O port the guest writes one byte to right before it resets itself,
/// so the VMM can tell a poweroff from a reboot (both reach the VMM as a
/// reset: the guest kernel runs with `reboot=k`).
pub const SHUTDOWN_ANNOUNCE_PORT: u16 = 0xf4;
/// Byte written to [`SHUTDOWN_ANNOUNCE_PORT`] before a poweroff.
pub const SHUTDOWN_ANNOUNCE_POWEROFF: u8 = 1;
/// Byte written to [`SHUTDOWN_ANNOUNCE_PORT`] before a reboot.
pub const SHUTDOWN_ANNOUNCE_REBOOT: u8 = 2;

impl pb::ShutdownKind {
    /// The byte the guest announces on [`SHUTDOWN_ANNOUNCE_PORT`] for this kind.
    pub fn announce_byte(self) -> u8 {
        match self {
            pb::ShutdownKind::Poweroff => SHUTDOWN_ANNOUNCE_POWEROFF,
            pb::ShutdownKind::Reboot => SHUTDOWN_ANNOUNCE_REBOOT,
        }
    }

    /// The kind a byte written to [`SHUTDOWN_ANNOUNCE_PORT`] announces, if any.
    pub fn from_announce_byte(byte: u8) -> Option<Self> {
        match byte {
            SHUTDOWN_ANNOUNCE_POWEROFF => Some(pb::ShutdownKind::Poweroff),
            SHUTDOWN_ANNOUNCE_REBOOT => Some(pb::ShutdownKind::Reboot),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pb::ShutdownKind;

    #[test]
    fn announce_byte_round_trips() {
        for kind in [ShutdownKind::Poweroff, ShutdownKind::Reboot] {
            assert_eq!(
                ShutdownKind::from_announce_byte(kind.announce_byte()),
                Some(kind)
            );
        }
        assert_eq!(ShutdownKind::Poweroff.announce_byte(), 1);
        assert_eq!(ShutdownKind::Reboot.announce_byte(), 2);
        assert_eq!(ShutdownKind::from_announce_byte(0), None);
        assert_eq!(ShutdownKind::from_announce_byte(3), None);
    }
}
