//! The server's errors, and their one map to gRPC codes: what kubelet reads to decide whether
//! to retry (Unavailable), to give up (InvalidArgument, FailedPrecondition) or to report.

use tonic::{Code, Status};
use vpod_sandbox::PodError;

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The request asks for something vpod refuses or can't read (a host namespace, a
    /// hostPath, a missing field); the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No pod or container with that id.
    #[error("{what} {id} not found")]
    NotFound {
        /// "pod sandbox", "container", "image".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The object is not in a state that allows the call (start of a started container).
    #[error("{0}")]
    State(String),
    /// An id or name that is already taken.
    #[error("{0}")]
    Exists(String),
    /// The pod's VM or its agent failed.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The image store or a registry failed.
    #[error(transparent)]
    Image(#[from] vpod_images::Error),
    /// The host failed (a file, a dir).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Not served by `vpod serve` (yet, or ever): the message says which.
    #[error("{0}")]
    Unimplemented(String),
    /// The call ran past its deadline (an ExecSync timeout).
    #[error("{0}")]
    Timeout(String),
    /// The pod network (CNI) failed.
    #[error("pod network: {0}")]
    Network(String),
}

/// Results of the server's operations.
pub type Result<T> = std::result::Result<T, CriError>;

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        let code = match &e {
            CriError::Invalid(_) => Code::InvalidArgument,
            CriError::NotFound { .. } => Code::NotFound,
            CriError::State(_) => Code::FailedPrecondition,
            CriError::Exists(_) => Code::AlreadyExists,
            CriError::Pod(p) => pod_code(p),
            CriError::Image(vpod_images::Error::NotFound(_)) => Code::NotFound,
            CriError::Image(_) => Code::Unknown,
            CriError::Io { .. } => Code::Internal,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Network(_) => Code::Unavailable,
            CriError::Timeout(_) => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}

/// A pod error's code: refusals of the spec are the caller's to fix; the rest is the pod's.
fn pod_code(e: &PodError) -> Code {
    match e {
        PodError::Oci { .. } | PodError::Grow { .. } | PodError::NetnsRefused { .. } => {
            Code::InvalidArgument
        }
        PodError::Container { status, .. } | PodError::Agent { status, .. } => status.code(),
        PodError::Connect { .. } | PodError::Ended { .. } => Code::Unavailable,
        _ => Code::Unknown,
    }
}
