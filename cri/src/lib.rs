//! vpod's own CRI runtime, what `vpod serve` runs: kubelet's RuntimeService and ImageService
//! on a unix socket, one microVM per pod through `vpod_sandbox::Pod` (no containerd, no pause
//! container), images as read-only erofs disks from `vpod_images`, the pod network through the
//! node's CNI plugins.
//!
//! ```text
//! kubelet ─CRI (unix socket)─► server ─► runtime/ (pods, containers, exec, info) ─► vpod_sandbox::Pod
//!                                     └► image (PullImage...) ─► vpod_images::Store
//!            runtime/sandbox ─► cni (netns, plugins)    runtime/container ─► spec (CRI → OCI), logs
//! ```
//!
//! - `config.rs`: `/etc/vpod/vpod.toml`; `server.rs`: the socket and both services;
//! - `spec.rs`: CRI configs as OCI specs (then the sandbox's one policy and translation);
//! - `state.rs`: pods and containers as CRI sees them; `logs.rs`: kubelet's log format;
//! - `error.rs`: the one map from errors to gRPC codes.

#![warn(missing_docs)]

pub mod cni;
pub mod config;
pub mod error;
pub mod image;
pub mod logs;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod state;

pub use config::ServeConfig;
pub use error::CriError;
pub use server::{serve, ServeError};
