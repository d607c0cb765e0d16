//! The [`Store`] handle: its directories under `<root>/images` and its lock files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::private::{private_dir, private_file};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::unpack::limits::UnpackLimits;

/// A content store rooted at `<root>/images`.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    limits: UnpackLimits,
}

impl Store {
    /// Opens (creating if needed) the store under `<root>/images`, with the default
    /// [`UnpackLimits`]. The store's directories get mode 0700 (existing ones too).
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).ctx("create directory", root)?;
        let dir = root.join("images");
        private_dir(&dir)?;
        for d in ["blobs", "blobs/sha256", "ingest", "disks", "leases", "work"] {
            private_dir(&dir.join(d))?;
        }
        Ok(Store {
            dir,
            limits: UnpackLimits::default(),
        })
    }

    /// The store with other limits on what building a block image may unpack.
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> Store {
        self.limits = limits;
        self
    }

    /// What building a block image may unpack.
    pub fn unpack_limits(&self) -> UnpackLimits {
        self.limits
    }

    /// `<root>/images`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.dir.join("ingest")
    }

    pub(crate) fn disks_dir(&self) -> PathBuf {
        self.dir.join("disks")
    }

    pub(crate) fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Where blob `d` is (or would be) stored.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub(super) fn lock(&self, name: &str, exclusive: bool) -> Result<Flock<File>> {
        let p = self.dir.join(name);
        let f = private_file(&p, false).ctx("open lock", &p)?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(f, arg).map_err(|(_, e)| Error::Io {
            op: "flock",
            path: p,
            source: e.into(),
        })
    }

    /// Held (shared) by anything that writes blobs and then refers to them, so that `prune`
    /// (exclusive) never deletes a blob between its write and the ref that keeps it.
    pub fn writer_guard(&self) -> Result<Flock<File>> {
        self.lock("gc.lock", false)
    }

    pub(crate) fn exclusive_lock(&self, name: &str) -> Result<Flock<File>> {
        self.lock(name, true)
    }
}
