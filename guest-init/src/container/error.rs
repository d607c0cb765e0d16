//! What a container operation can fail with, and the gRPC code each failure
//! is answered with (picked here, once).

use crate::disks::DiskError;
use crate::volumes::VolumeError;

/// A container operation's failure, naming the container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not a name the agent uses as a path component.
    #[error("container id {0:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    /// CreateContainer for an id in use.
    #[error("container {0} already exists")]
    Exists(String),
    /// No container has this id.
    #[error("no container {0}")]
    NotFound(String),
    /// A signal for a container whose process has exited (answered as runc's
    /// shim does: not found, so a stop racing the exit succeeds).
    #[error("container {0}: process already finished")]
    Finished(String),
    /// The container's state does not allow the operation.
    #[error("container {id} is {state}, {what}")]
    State {
        /// The container.
        id: String,
        /// Its state's name (or "attached").
        state: &'static str,
        /// Why that refuses the operation.
        what: &'static str,
    },
    /// The request itself is wrong.
    #[error("container {id}: {msg}")]
    Invalid {
        /// The container.
        id: String,
        /// What is wrong with the request.
        msg: String,
    },
    /// The container's init reported a start error.
    #[error("container {id}: start: {msg}")]
    Start {
        /// The container.
        id: String,
        /// The init's own words.
        msg: String,
    },
    /// A system call failed.
    #[error("container {id}: {op}: {source}")]
    Io {
        /// The container.
        id: String,
        /// What the agent was doing.
        op: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The image or ephemeral disk.
    #[error("container {id}: {source}")]
    Disk {
        /// The container.
        id: String,
        /// The disk's failure.
        source: DiskError,
    },
    /// A volume mount's source.
    #[error("container {id}: {source}")]
    Volume {
        /// The container.
        id: String,
        /// The volume's failure.
        source: VolumeError,
    },
}

impl From<ContainerError> for tonic::Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError::*;
        let msg = e.to_string();
        match e {
            BadId(_) | Invalid { .. } => tonic::Status::invalid_argument(msg),
            Exists(_) => tonic::Status::already_exists(msg),
            NotFound(_) | Finished(_) => tonic::Status::not_found(msg),
            State { .. } | Start { .. } => tonic::Status::failed_precondition(msg),
            Volume {
                source: VolumeError::Unknown(_),
                ..
            }
            | Disk {
                source: DiskError::NotFound(_) | DiskError::NoEphemeral,
                ..
            } => tonic::Status::failed_precondition(msg),
            Io { .. } | Disk { .. } | Volume { .. } => tonic::Status::internal(msg),
        }
    }
}
