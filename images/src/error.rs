//! One error type for the crate: every variant says what was being done to what.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and with what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string that is not a `sha256:<hex>` digest.
    #[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
    BadDigest(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("rename into place", "fsync").
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Content written to the store is not what its descriptor names: nothing was kept.
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// The content ("layer sha256:...", "manifest busybox:latest").
        what: String,
        /// The digest its descriptor gives.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// Content written to the store has another size than its descriptor says.
    #[error("{what}: {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        /// The content.
        what: String,
        /// The size its descriptor gives.
        expected: u64,
        /// The size of what arrived.
        actual: u64,
    },
    /// A blob the operation needs is not in the store.
    #[error("blob {0} is not in the store")]
    BlobMissing(Digest),
    /// A stored blob no longer hashes to its name.
    #[error("blob {digest} in the store is corrupted: its content hashes to {actual}")]
    BlobCorrupted {
        /// The blob's name.
        digest: Digest,
        /// What its content hashes to now.
        actual: Digest,
    },
    /// A manifest, index or layer of a media type vpod does not read.
    #[error("{what}: unknown media type {media_type:?}")]
    UnknownMediaType {
        /// The document or layer.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// A JSON document (manifest, config, refs.json) does not parse.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// The document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An image archive (OCI layout or `docker save` tar) is malformed or refused.
    #[error("{path}: {reason}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer entry that is refused (escapes the root, bad whiteout, unsupported type...).
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadLayerEntry {
        /// The layer's digest.
        layer: Digest,
        /// The entry's name (cut when long).
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// Reading a layer or writing one of its entries failed.
    #[error("layer {layer}: {op} {entry:?}: {source}")]
    LayerIo {
        /// The layer's digest.
        layer: Digest,
        /// What was being done ("create", "chown", "read tar").
        op: &'static str,
        /// The entry's name (empty before the first entry).
        entry: String,
        /// The OS or tar reader's error.
        #[source]
        source: io::Error,
    },
    /// An image is bigger, unpacked, than [`crate::unpack::UnpackLimits`] allows.
    #[error("layer {layer}: entry {entry:?}: the image exceeds the unpack limit {limit_name} = {limit} ({what})")]
    LimitExceeded {
        /// The layer's digest.
        layer: Digest,
        /// The entry that went over.
        entry: String,
        /// The field of `UnpackLimits` that was hit.
        limit_name: &'static str,
        /// Its value.
        limit: u64,
        /// What went over, in words.
        what: String,
    },
    /// No reference or digest in the store matches the name.
    #[error("image {0:?} is not in the store")]
    NotFound(String),
    /// A name that is not a valid image reference (or lease holder).
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// The name given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `rm` of an image's last reference while pods hold leases on it.
    #[error("image {reference} is in use by {users:?}: stop them first")]
    InUse {
        /// The name given to `rm`.
        reference: String,
        /// The lease holders (pod ids).
        users: Vec<String>,
    },
    /// A multi-platform index without a linux/amd64 manifest.
    #[error("image index {0} has no linux/amd64 manifest")]
    NoPlatform(Digest),
    /// An external tool (`mkfs.erofs`, `mkfs.ext4`) failed or is missing.
    #[error("{tool}: {reason}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its exit status and output, or why it could not run.
        reason: String,
    },
    /// A registry refused or failed a pull.
    #[error("pull {reference} from {registry}: {source}")]
    Registry {
        /// The image reference pulled.
        reference: String,
        /// The registry (or mirror) asked.
        registry: String,
        /// The registry client's error.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// The registry configuration file is malformed.
    #[error("registry config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Attaches "what was done to which path" to an `io::Error`.
pub trait IoContext<T> {
    /// Turns the error into [`Error::Io`] with `op` and `path`.
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
