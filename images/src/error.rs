//! One error type for the crate: every variant says what was being done to what.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
    BadDigest(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store")]
    BlobMissing(Digest),
    #[error("blob {digest} in the store is corrupted: its content hashes to {actual}")]
    BlobCorrupted { digest: Digest, actual: Digest },
    #[error("{what}: unknown media type {media_type:?}")]
    UnknownMediaType { what: String, media_type: String },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadLayerEntry {
        layer: Digest,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: {op} {entry:?}: {source}")]
    LayerIo {
        layer: Digest,
        op: &'static str,
        entry: String,
        #[source]
        source: io::Error,
    },
    /// An image is bigger, unpacked, than [`crate::unpack::UnpackLimits`] allows.
    #[error("layer {layer}: entry {entry:?}: the image exceeds the unpack limit {limit_name} = {limit} ({what})")]
    LimitExceeded {
        layer: Digest,
        entry: String,
        /// The field of `UnpackLimits` that was hit.
        limit_name: &'static str,
        limit: u64,
        /// What went over, in words.
        what: String,
    },
    #[error("image {0:?} is not in the store")]
    NotFound(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("image {reference} is in use by {users:?}: stop them first")]
    InUse {
        reference: String,
        users: Vec<String>,
    },
    #[error("image index {0} has no linux/amd64 manifest")]
    NoPlatform(Digest),
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    #[error("pull {reference} from {registry}: {source}")]
    Registry {
        reference: String,
        registry: String,
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    #[error("registry config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// Attaches "what was done to which path" to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_owned(),
            source,
        })
    }
}
