//! Garbage collection and usage: what no reference or lease keeps is removed; what the store
//! holds is counted.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::layout::Store;
use crate::digest::Digest;
use crate::error::{IoContext, Result};

/// Usage figures of the store (`vpod image usage`; the figures a CRI ImageFsInfo gives).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Usage {
    /// Blobs stored.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Block images built.
    pub disks: u64,
    /// Their bytes.
    pub disk_bytes: u64,
    /// References (image names).
    pub images: u64,
    /// Bytes actually allocated on the filesystem by the whole store.
    pub used_bytes: u64,
    /// Inodes the whole store uses.
    pub inodes: u64,
}

/// What `prune` removed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PruneReport {
    /// Blobs no reference or lease kept.
    pub blobs_removed: u64,
    /// Block images no reference or lease kept.
    pub disks_removed: u64,
    /// Leftover temp files and work trees.
    pub temp_removed: u64,
    /// Bytes of everything removed.
    pub bytes_freed: u64,
}

impl Store {
    /// Removes blobs and block images no reference or lease keeps, and stale temp files.
    pub fn prune(&self) -> Result<PruneReport> {
        let _gc = self.exclusive_lock("gc.lock")?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_disks = BTreeSet::new();
        let mut live: BTreeSet<Digest> = self.refs()?.into_values().collect();
        let leases = self.dir().join("leases");
        for e in fs::read_dir(&leases)
            .ctx("read directory", &leases)?
            .flatten()
        {
            if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
                if fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some()) {
                    live.insert(d);
                } else {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        for d in &live {
            keep_blobs.insert(d.hex().to_owned());
            keep_disks.insert(d.hex().to_owned());
            // A missing or broken manifest keeps only itself: prune must not fail on it.
            if let Ok((md, m)) = self.manifest(d) {
                keep_blobs.insert(md.hex().to_owned());
                keep_disks.insert(md.hex().to_owned());
                keep_blobs.insert(m.config.digest.hex().to_owned());
                for l in &m.layers {
                    keep_blobs.insert(l.digest.hex().to_owned());
                }
            }
        }
        let mut r = PruneReport::default();
        let blobs = self.dir().join("blobs/sha256");
        for e in fs::read_dir(&blobs)
            .ctx("read directory", &blobs)?
            .flatten()
        {
            if !keep_blobs.contains(&*e.file_name().to_string_lossy()) {
                r.bytes_freed += e.metadata().map_or(0, |m| m.len());
                fs::remove_file(e.path()).ctx("remove", &e.path())?;
                r.blobs_removed += 1;
            }
        }
        let disks = self.disks_dir();
        for e in fs::read_dir(&disks)
            .ctx("read directory", &disks)?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            if !keep_disks.contains(stem) {
                r.bytes_freed += e.metadata().map_or(0, |m| m.len());
                let _ = fs::remove_file(e.path());
                if name.ends_with(".erofs") || name.ends_with(".ext4") {
                    r.disks_removed += 1;
                }
            }
        }
        // Writers hold gc.lock shared: with it exclusive, every temp file is a leftover.
        for dir in [self.ingest_dir(), self.work_dir()] {
            for e in fs::read_dir(&dir).ctx("read directory", &dir)?.flatten() {
                let p = e.path();
                r.temp_removed += 1;
                if p.is_dir() {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    r.bytes_freed += e.metadata().map_or(0, |m| m.len());
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(r)
    }

    /// Usage figures of the store.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage {
            images: self.refs()?.len() as u64,
            ..Usage::default()
        };
        let blobs = self.dir().join("blobs/sha256");
        for e in fs::read_dir(&blobs)
            .ctx("read directory", &blobs)?
            .flatten()
        {
            u.blobs += 1;
            u.blob_bytes += e.metadata().map_or(0, |m| m.len());
        }
        let disks = self.disks_dir();
        for e in fs::read_dir(&disks)
            .ctx("read directory", &disks)?
            .flatten()
        {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.ends_with(".erofs") || n.ends_with(".ext4") {
                u.disks += 1;
                u.disk_bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
        let (bytes, inodes) = du(self.dir());
        u.used_bytes = bytes;
        u.inodes = inodes;
        Ok(u)
    }
}

/// Allocated bytes and inode count under `p` (not following symlinks).
fn du(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return (0, 0);
    };
    let mut bytes = m.blocks() * 512;
    let mut inodes = 1;
    if m.is_dir() {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let (b, i) = du(&e.path());
                bytes += b;
                inodes += i;
            }
        }
    }
    (bytes, inodes)
}
