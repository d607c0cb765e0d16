#![warn(missing_docs)]
//! vpod-init: PID 1 of a vpod guest.
//!
//! It sets the guest up (mounts, cgroups, hostname, loopback, entropy) and
//! serves the agent API (`vpod-agent-api`) on virtio-vsock. The library holds
//! everything but `main`, so the server runs on the host in tests
//! (`--listen-unix`, or [`service::serve`] on any listener).

pub mod args;
pub mod clock;
pub mod container;
pub mod disks;
pub mod health;
pub mod kmsg;
pub mod log;
pub mod net;
pub mod pod;
pub mod portforward;
pub mod power;
pub mod ready;
pub mod reaper;
pub mod service;
pub mod setup;
pub mod volumes;

pub use service::{serve, AgentConfig, AgentService, ServeError, ShutdownRequested};
