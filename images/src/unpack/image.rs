//! An image's layers, from the store, unpacked in order: each blob verified as it streams.

use std::io;
use std::path::Path;

use super::stream::spawn_decompressor;
use super::walk::Unpacker;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::Store;

/// Unpacks `layers` (blobs in `store`) into `root`, verifying each blob's digest as it streams.
/// Within the store's [`UnpackLimits`](crate::UnpackLimits).
pub fn unpack_image(store: &Store, layers: &[Digest], root: &Path) -> Result<()> {
    let mut u = Unpacker::with_limits(root, store.unpack_limits());
    for d in layers {
        let (reader, producer) = spawn_decompressor(store.open_blob(d)?);
        let res = u.apply_tar(d, reader);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("decompressor panicked")));
        match (res, produced) {
            (Ok(()), Ok(actual)) if actual == *d => {}
            (Ok(()), Ok(actual)) => {
                return Err(Error::BlobCorrupted {
                    digest: d.clone(),
                    actual,
                })
            }
            // A corrupted blob explains any unpack error it causes: report that first.
            (res, produced) => {
                store.verify_blob(d)?;
                res?;
                produced.map_err(|e| Error::Io {
                    op: "read",
                    path: store.blob_path(d),
                    source: e,
                })?;
            }
        }
    }
    u.finish()
}
