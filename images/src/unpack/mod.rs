//! Applies image layers (tar, gzip or zstd) to a directory: whiteouts and opaque dirs, modes,
//! ownership, xattrs, hard links, symlinks and device nodes. Every path is resolved inside the
//! root (symlinks followed as the container would see them, absolute ones relative to the root);
//! an entry that would land outside it is refused.
//!
//! What a layer may cost is bounded by [`UnpackLimits`]: the bytes and entries of the whole
//! image, and the bytes the tar reader takes in besides file data (headers, long names and PAX
//! records, which are held in memory, and anything after the end of the archive).
//!
//! The tree holds the image's set-id files and device nodes as they are: callers unpack into a
//! directory no other user can reach (the store's work dirs are 0700 under 0700 parents).
//! [`unpack_tar`] is the one-call entry point (for tools and fuzz targets).
//!
//! Files: `walk` reads a layer's tar entries in order ([`Unpacker`]), `entry` applies one entry,
//! `tree` knows the directory being written (paths resolved inside it, directory times),
//! `limits` counts what the image costs, `stream` decompresses, `image` unpacks an image's layers
//! from the store.

mod entry;
mod image;
pub(crate) mod limits;
mod stream;
mod tree;
mod walk;

pub use image::unpack_image;
pub use limits::{UnpackLimits, UnpackStats};
pub use stream::decompress;
pub use walk::{unpack_tar, Unpacker};
