//! What unpacking an image may cost ([`UnpackLimits`]), what it spent so far ([`UnpackStats`]),
//! and the reader that bounds what the tar parser takes in besides file data.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// How big an image may be once unpacked (all its layers together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Sum of the sizes every entry claims (sparse files at their full size), plus xattrs.
    /// Files a later layer replaces still count: they were written.
    pub max_bytes: u64,
    /// Number of tar entries (whiteouts and directories included).
    pub max_entries: u64,
    /// What the tar reader may consume for one entry besides its data: header blocks, GNU long
    /// names and PAX records (read into memory whole); also the bound on what may follow the
    /// end of an archive.
    pub max_metadata_bytes: u64,
}

impl UnpackLimits {
    /// 10 GiB, a million entries, 16 MiB of metadata per entry.
    pub const DEFAULT: UnpackLimits = UnpackLimits {
        max_bytes: 10 << 30,
        max_entries: 1_000_000,
        max_metadata_bytes: 16 << 20,
    };
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits::DEFAULT
    }
}

/// What an unpack wrote so far (what the limits count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes counted against [`UnpackLimits::max_bytes`].
    pub bytes: u64,
    /// Tar entries counted against [`UnpackLimits::max_entries`].
    pub entries: u64,
}

/// The limits of one unpack and what the layers applied so far spent against them.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) limits: UnpackLimits,
    pub(super) stats: UnpackStats,
}

impl Tally {
    pub(super) fn new(limits: UnpackLimits) -> Tally {
        Tally {
            limits,
            stats: UnpackStats::default(),
        }
    }

    /// Counts one more tar entry against `max_entries`.
    pub(super) fn count_entry(&mut self, layer: &Digest, entry: &str) -> Result<()> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(limit(
                layer,
                entry,
                "max_entries",
                self.limits.max_entries,
                "number of tar entries in the image".into(),
            ));
        }
        Ok(())
    }

    /// Counts `bytes` more against `max_bytes`.
    pub(super) fn charge(&mut self, layer: &Digest, entry: &str, bytes: u64) -> Result<()> {
        let total = self.stats.bytes.saturating_add(bytes);
        if total > self.limits.max_bytes {
            return Err(limit(
                layer,
                entry,
                "max_bytes",
                self.limits.max_bytes,
                format!(
                    "unpacked size: {} bytes so far, this entry adds {bytes}",
                    self.stats.bytes
                ),
            ));
        }
        self.stats.bytes = total;
        Ok(())
    }
}

fn limit(layer: &Digest, entry: &str, limit_name: &'static str, limit: u64, what: String) -> Error {
    Error::LimitExceeded {
        layer: layer.clone(),
        entry: entry.to_owned(),
        limit_name,
        limit,
        what,
    }
}

/// Counts down what the tar reader may still take from the stream; a read past it fails.
pub(super) struct Budgeted<R> {
    pub(super) inner: R,
    pub(super) left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other("tar metadata budget exhausted"));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}
