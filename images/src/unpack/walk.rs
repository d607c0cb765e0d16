//! The tar walk: [`Unpacker`] reads a layer's entries in order, within the metadata budget, and
//! hands each to the entry writer; [`unpack_tar`] is the one-call entry point.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use super::entry::apply as apply_entry;
use super::limits::{Budgeted, Tally, UnpackLimits, UnpackStats};
use super::stream::decompress;
use super::tree::{Layer, Tree};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Unpacks layers, in order, into one directory.
#[derive(Debug)]
pub struct Unpacker {
    tree: Tree,
    tally: Tally,
}

/// Unpacks one layer stream (a tar, or a gzip or zstd compressed one) into `dest`, an existing
/// directory, within `limits`: the entry point for tools and fuzz targets. Nothing is written
/// outside `dest`, whatever the stream holds; errors name the layer as the digest of the empty
/// string (the stream's digest is not computed). Unpack as root only into a directory other
/// users can't reach: the tree may hold set-id files and device nodes.
pub fn unpack_tar(stream: impl Read, dest: &Path, limits: UnpackLimits) -> Result<UnpackStats> {
    let mut u = Unpacker::with_limits(dest, limits);
    u.apply(&Digest::of(b""), stream)?;
    let stats = u.stats();
    u.finish()?;
    Ok(stats)
}

impl Unpacker {
    /// `root` must exist (and is normally empty). Default limits.
    pub fn new(root: &Path) -> Unpacker {
        Unpacker::with_limits(root, UnpackLimits::default())
    }

    /// `root` must exist (and is normally empty).
    pub fn with_limits(root: &Path, limits: UnpackLimits) -> Unpacker {
        Unpacker {
            tree: Tree::new(root),
            tally: Tally::new(limits),
        }
    }

    /// What the layers applied so far wrote.
    pub fn stats(&self) -> UnpackStats {
        self.tally.stats
    }

    /// Applies one layer read from `r` (compressed or not). Reads `r` to the end of the tar.
    pub fn apply(&mut self, digest: &Digest, r: impl Read) -> Result<()> {
        let stream =
            decompress(BufReader::with_capacity(1 << 20, r)).map_err(|e| Error::LayerIo {
                layer: digest.clone(),
                op: "read",
                entry: String::new(),
                source: e,
            })?;
        self.apply_tar(digest, stream)
    }

    /// Applies one layer from an already decompressed tar stream.
    pub fn apply_tar(&mut self, digest: &Digest, stream: impl Read) -> Result<()> {
        let io_err = |op: &'static str, entry: &str, source: io::Error| Error::LayerIo {
            layer: digest.clone(),
            op,
            entry: entry.to_owned(),
            source,
        };
        let meta = self.tally.limits.max_metadata_bytes;
        let left = Rc::new(Cell::new(meta));
        let over = |left: &Cell<u64>, entry: &str, e: io::Error| {
            if left.get() == 0 {
                Error::LimitExceeded {
                    layer: digest.clone(),
                    entry: entry.to_owned(),
                    limit_name: "max_metadata_bytes",
                    limit: meta,
                    what: "tar headers, long names and PAX records of one entry, or data after \
                           the end of the archive"
                        .into(),
                }
            } else {
                io_err("read tar", entry, e)
            }
        };
        let mut archive = tar::Archive::new(Budgeted {
            inner: stream,
            left: left.clone(),
        });
        let mut layer = Layer::new(digest);
        let mut buf = vec![0u8; 256 << 10];
        let entries = archive.entries().map_err(|e| over(&left, "", e))?;
        let mut last = String::new();
        for entry in entries {
            let mut entry = entry.map_err(|e| over(&left, &last, e))?;
            // File data is counted against max_bytes, not this budget.
            left.set(u64::MAX);
            let name = shown(&entry.path_bytes());
            let size = entry.size();
            let read = apply_entry(
                &mut self.tree,
                &mut self.tally,
                &mut layer,
                &mut entry,
                &name,
                &mut buf,
            )?;
            // The next header, plus the rest of this entry's data the reader skips (counted in
            // max_bytes already) and its padding.
            left.set(
                meta.saturating_add(size.saturating_sub(read))
                    .saturating_add(512),
            );
            last = name;
        }
        // Tar streams end with zero blocks and compressors with trailers: read them so the blob
        // hash covers all of it.
        left.set(meta);
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|e| over(&left, "(end of layer)", e))?;
        Ok(())
    }

    /// Applies directory mtimes (call once after the last layer).
    pub fn finish(self) -> Result<()> {
        self.tree.finish();
        Ok(())
    }
}

/// An entry name for messages: lossy UTF-8, long ones cut (a name can be megabytes).
fn shown(raw: &[u8]) -> String {
    const MAX: usize = 256;
    if raw.len() <= MAX {
        return String::from_utf8_lossy(raw).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&raw[..MAX]),
        raw.len()
    )
}
