//! vpod-agent-api: the host <-> guest agent API of vpod.
//!
//! The guest's PID 1 (`vpod-init`) serves the `vpod.agent.v1.Agent` gRPC
//! service on virtio-vsock port [`AGENT_VSOCK_PORT`]; the host side (shim,
//! VMM tools, tests) reaches it through the VMM's vsock unix socket with
//! [`connect`] / [`connect_with_retry`].
//!
//! The protobuf types, the generated client ([`AgentClient`]) and the server
//! trait ([`Agent`], wrapped by [`AgentServer`]) come from `proto/agent.proto`.

#![warn(missing_docs)]

mod client;
pub mod pb;
pub mod ready;
pub mod seccomp;
pub mod sysctl;

pub use client::{
    call_timeout, connect, connect_with_retry, connect_with_timeout, vsock_handshake, AgentChannel,
    Error, CALL_TIMEOUT_ENV, DEFAULT_CALL_TIMEOUT, HANDSHAKE_TIMEOUT,
};
pub use ready::{ReadyListener, AGENT_READY_PORT};

pub use pb::agent_client::AgentClient;
pub use pb::agent_server::{Agent, AgentServer};

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Version of the API served by this build; reported in `Version`. Bumped
/// whenever RPCs or fields are added.
pub const API_VERSION: u32 = 3;
