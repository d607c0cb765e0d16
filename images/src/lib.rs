//! vpod-images: OCI images become read-only erofs (or ext4) block images.
//!
//! Data flows one way: registry or archive -> [`Store`] (verified blobs, refs) ->
//! [`Store::ensure_block_image`] (unpack layers, `mkfs.erofs`, cached by manifest digest) ->
//! a [`BlockImage`] the shim attaches read-only to a pod's microVM.

#![warn(missing_docs)]

pub mod blockimg;
pub mod digest;
pub mod error;
pub mod import;
pub mod oci;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use blockimg::{make_fs, BlockImage, BuildStats, FsType, ImageInfo};
pub use digest::Digest;
pub use error::{Error, Result};
pub use import::{import, import_and_build, Imported};
pub use pull::{pull, pull_and_build, Progress, Pulled, RegistryAuth, RegistryConfig};
pub use store::{PruneReport, Store, Usage};
pub use unpack::{unpack_tar, UnpackLimits, UnpackStats};

/// Default root of vpod's state.
pub const DEFAULT_ROOT: &str = "/var/lib/vpod";
