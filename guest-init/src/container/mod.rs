//! Containers in the pod: each one a process tree in its own mount, UTS and
//! PID namespaces (the PID namespace is the pod's when it shares one; IPC and
//! the network are always the pod's, see `podns`), in its own cgroup, on an
//! overlay of its image's read-only disk and a writable layer on the pod's
//! ephemeral disk.
//!
//! The agent side is one file per operation on [`Containers`] (create,
//! start, kill, stop, exec, wait, remove, attach, stats), each asking
//! `State` whether it may run; [`init`] is the container's side (a separate
//! exec of vpod-init that enters the namespaces and execs the process), and
//! `pipe` the protocol between the two.

mod attach;
pub mod cgroup;
mod containers;
mod create;
mod error;
mod exec;
pub mod init;
mod kill;
mod pipe;
pub mod podns;
mod remove;
pub mod seccomp;
mod start;
mod state;
mod stats;
pub mod stdio;
mod stop;
mod wait;

pub use containers::{valid_id, Container, Containers, ROOTFS_ROOT};
pub use error::ContainerError;
pub use exec::ExecHandle;
