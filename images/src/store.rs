//! The content store: blobs by sha256 (verified on write, renamed into place only when whole),
//! image references -> manifest digests, leases held by pods, and garbage collection.
//!
//! Layout under `<root>/images/`:
//! ```text
//! blobs/sha256/<hex>        verified content, never modified
//! ingest/                   temp files being written (never served; removed on error or by prune)
//! refs.json                 {"docker.io/library/busybox:latest": "sha256:..."}   (under refs.lock)
//! disks/<hex>.erofs|.ext4   block image of manifest <hex>, and <hex>.json its ImageInfo
//! leases/<hex>/<user>       a pod using the image: `rm` refuses while one exists
//! work/<id>/rootfs          unpack trees while a block image is built
//! ```
//! An unpacked tree holds the image's setuid-root files and device nodes as they are, so no one
//! but root may reach into the store: every directory of it is 0700 and every file it writes
//! 0600, set explicitly (whatever the umask), and `open` puts those modes back on an existing
//! store's directories.
//! Two processes may use one store: blob writes are atomic renames, refs.json is rewritten under
//! an exclusive flock, and prune takes `gc.lock` exclusively while every writer holds it shared.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::digest::{Digest, Hasher, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Parsed};
use crate::unpack::UnpackLimits;

/// Mode of every directory of the store.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the store writes.
pub const FILE_MODE: u32 = 0o600;

/// A content store rooted at `<root>/images`.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    limits: UnpackLimits,
}

/// Creates `p` (its parent must exist) if missing, and gives it mode 0700 either way.
pub(crate) fn private_dir(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx("create directory", p),
    }
    let m = fs::symlink_metadata(p).ctx("stat", p)?;
    if !m.is_dir() {
        return Err(Error::Io {
            op: "create directory",
            path: p.to_owned(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        });
    }
    if m.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(p, fs::Permissions::from_mode(DIR_MODE)).ctx("chmod", p)?;
    }
    Ok(())
}

/// Opens `p` for writing, creating it 0600 (made so explicitly, whatever the umask).
fn private_file(p: &Path, create_new: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(!create_new)
        .create_new(create_new)
        .truncate(false)
        .mode(FILE_MODE)
        .open(p)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Usage figures (for `vpod image usage` and CRI ImageFsInfo).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Usage {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub disks: u64,
    pub disk_bytes: u64,
    pub images: u64,
    /// Bytes actually allocated on the filesystem by the whole store.
    pub used_bytes: u64,
    pub inodes: u64,
}

/// What `prune` removed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PruneReport {
    pub blobs_removed: u64,
    pub disks_removed: u64,
    pub temp_removed: u64,
    pub bytes_freed: u64,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file in `ingest/` that is deleted unless committed.
pub(crate) struct TempFile {
    pub path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub(crate) fn new(dir: &Path, tag: &str) -> Result<(TempFile, File)> {
        let name = format!(
            "{tag}-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let f = private_file(&path, true).ctx("create", &path)?;
        Ok((TempFile { path, keep: false }, f))
    }

    /// Renames the temp file to `dest` (atomic: `dest` is either absent or whole).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).ctx("rename into place", dest)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// An open blob write: feed it bytes, then `commit` checks the digest and renames it into place.
pub struct BlobWriter {
    store: Store,
    temp: TempFile,
    out: HashingWriter<BufWriter<File>>,
}

impl BlobWriter {
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).ctx("write", &self.temp.path)
    }

    /// Verifies digest (and size, when known) and publishes the blob. On any mismatch the temp
    /// file is removed and nothing is served.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let BlobWriter {
            store,
            temp,
            mut out,
        } = self;
        out.flush().ctx("write", &temp.path)?;
        let len = out.hasher.len();
        let digest = out.hasher.finish();
        if let Some(want) = expected {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: what.to_owned(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        if let Some(want) = expected_size {
            if want != len {
                return Err(Error::SizeMismatch {
                    what: what.to_owned(),
                    expected: want,
                    actual: len,
                });
            }
        }
        let file = out.inner.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: temp.path.clone(),
            source: e.into_error(),
        })?;
        // Data reaches the disk before the name does: a crash never leaves a named, torn blob.
        file.sync_all().ctx("fsync", &temp.path)?;
        let dest = store.blob_path(&digest);
        if !dest.exists() {
            temp.persist(&dest)?;
        }
        Ok((digest, len))
    }
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

    pub fn unpack_limits(&self) -> UnpackLimits {
        self.limits
    }

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

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Starts writing a blob whose digest is checked at `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let (temp, file) = TempFile::new(&self.ingest_dir(), "blob")?;
        Ok(BlobWriter {
            store: self.clone(),
            temp,
            out: HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: Hasher::default(),
            },
        })
    }

    /// Copies `r` into the store. With `expected`, a mismatch is an error and nothing is kept.
    pub fn ingest(
        &self,
        mut r: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                return Ok((
                    d.clone(),
                    fs::metadata(self.blob_path(d)).map_or(0, |m| m.len()),
                ));
            }
        }
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        op: "read",
                        path: PathBuf::from(what),
                        source: e,
                    })
                }
            };
            w.write_all(&buf[..n])?;
        }
        w.commit(expected, expected_size, what)
    }

    pub fn ingest_bytes(
        &self,
        data: &[u8],
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Digest> {
        Ok(self
            .ingest(data, expected, Some(data.len() as u64), what)?
            .0)
    }

    /// Opens a blob for streaming; the reader checks the digest when `finish`ed.
    pub fn open_blob(&self, d: &Digest) -> Result<HashingReader<File>> {
        let p = self.blob_path(d);
        match File::open(&p) {
            Ok(f) => Ok(HashingReader::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobMissing(d.clone())),
            Err(e) => Err(e).ctx("open", &p),
        }
    }

    /// Re-hashes a stored blob: an error if it is missing or its content changed.
    pub fn verify_blob(&self, d: &Digest) -> Result<()> {
        let (actual, _) = self
            .open_blob(d)?
            .finish()
            .ctx("read", &self.blob_path(d))?;
        if actual != *d {
            return Err(Error::BlobCorrupted {
                digest: d.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Reads a whole (small) blob and verifies it.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let data = match fs::read(&p) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BlobMissing(d.clone()))
            }
            Err(e) => return Err(e).ctx("read", &p),
        };
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(Error::BlobCorrupted {
                digest: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<Flock<File>> {
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

    // ---- references ----

    fn refs_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    fn read_refs(&self) -> Result<BTreeMap<String, Digest>> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::Json {
                what: p.display().to_string(),
                source: e,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).ctx("read", &p),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<()> {
        let (temp, mut f) = TempFile::new(&self.ingest_dir(), "refs")?;
        let data = serde_json::to_vec_pretty(refs).expect("refs serialize");
        f.write_all(&data).ctx("write", &temp.path)?;
        f.sync_all().ctx("fsync", &temp.path)?;
        temp.persist(&self.refs_path())
    }

    /// All references, name -> manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, Digest>> {
        let _l = self.lock("refs.lock", false)?;
        self.read_refs()
    }

    /// Points `name` at `manifest` (the manifest blob must be in the store).
    pub fn set_ref(&self, name: &str, manifest: &Digest) -> Result<()> {
        self.set_refs(&[(name.to_owned(), manifest.clone())])
    }

    /// Points each name at its manifest, all or none (one rewrite of refs.json).
    pub fn set_refs(&self, refs_to_set: &[(String, Digest)]) -> Result<()> {
        for (_, manifest) in refs_to_set {
            if !self.has_blob(manifest) {
                return Err(Error::BlobMissing(manifest.clone()));
            }
        }
        let _l = self.lock("refs.lock", true)?;
        let mut refs = self.read_refs()?;
        for (name, manifest) in refs_to_set {
            refs.insert(name.clone(), manifest.clone());
        }
        self.write_refs(&refs)
    }

    /// Resolves a name (exact, or normalised like `busybox` -> `docker.io/library/busybox:latest`),
    /// a full digest, or a unique digest prefix (at least 12 hex characters).
    pub fn resolve(&self, name: &str) -> Result<Digest> {
        let refs = self.refs()?;
        if let Some(d) = refs.get(name) {
            return Ok(d.clone());
        }
        if let Ok(norm) = crate::reference::normalize(name) {
            if let Some(d) = refs.get(&norm) {
                return Ok(d.clone());
            }
        }
        if let Ok(d) = name.parse::<Digest>() {
            if refs.values().any(|v| *v == d) {
                return Ok(d);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: BTreeSet<&Digest> =
                refs.values().filter(|d| d.hex().starts_with(hex)).collect();
            if found.len() == 1 {
                return Ok((*found.iter().next().unwrap()).clone());
            }
        }
        Err(Error::NotFound(name.to_owned()))
    }

    /// Removes a reference, or every reference to a digest. Refuses while a pod holds a lease on
    /// the image and this is its last reference. Returns the names removed.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        let digest = self.resolve(name)?;
        let _l = self.lock("refs.lock", true)?;
        let mut refs = self.read_refs()?;
        let by_name = refs.contains_key(name)
            || crate::reference::normalize(name).is_ok_and(|n| refs.contains_key(&n));
        let names: Vec<String> = if by_name {
            let n = if refs.contains_key(name) {
                name.to_owned()
            } else {
                crate::reference::normalize(name)?
            };
            vec![n]
        } else {
            refs.iter()
                .filter(|(_, d)| **d == digest)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let remaining = refs
            .iter()
            .filter(|(n, d)| **d == digest && !names.contains(n))
            .count();
        if remaining == 0 {
            let users = self.leases(&digest)?;
            if !users.is_empty() {
                return Err(Error::InUse {
                    reference: name.to_owned(),
                    users,
                });
            }
        }
        for n in &names {
            refs.remove(n);
        }
        self.write_refs(&refs)?;
        Ok(names)
    }

    // ---- leases ----

    fn lease_dir(&self, d: &Digest) -> PathBuf {
        self.dir.join("leases").join(d.hex())
    }

    /// Marks the image as used by `user` (a pod id): `rm` and `prune` keep it.
    pub fn lease(&self, d: &Digest, user: &str) -> Result<()> {
        if user.is_empty() || user.contains('/') || user.starts_with('.') {
            return Err(Error::BadReference {
                reference: user.to_owned(),
                reason: "lease holder must be a plain name".into(),
            });
        }
        let dir = self.lease_dir(d);
        private_dir(&dir)?;
        let p = dir.join(user);
        private_file(&p, false).ctx("create", &p)?;
        Ok(())
    }

    pub fn release(&self, d: &Digest, user: &str) -> Result<()> {
        let p = self.lease_dir(d).join(user);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", &p),
        }
    }

    pub fn leases(&self, d: &Digest) -> Result<Vec<String>> {
        let dir = self.lease_dir(d);
        match fs::read_dir(&dir) {
            Ok(rd) => Ok(rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).ctx("read directory", &dir),
        }
    }

    // ---- manifests ----

    /// Reads a manifest from the store (an index is resolved to its linux/amd64 manifest).
    pub fn manifest(&self, d: &Digest) -> Result<(Digest, oci::Manifest)> {
        let data = self.read_blob(d)?;
        match oci::parse_manifest(&data, None, &format!("manifest {d}"))? {
            Parsed::Manifest(m) => Ok((d.clone(), m)),
            Parsed::Index(i) => {
                let desc = oci::pick_platform(&i).ok_or_else(|| Error::NoPlatform(d.clone()))?;
                let data = self.read_blob(&desc.digest)?;
                match oci::parse_manifest(&data, None, &format!("manifest {}", desc.digest))? {
                    Parsed::Manifest(m) => Ok((desc.digest.clone(), m)),
                    Parsed::Index(_) => Err(Error::UnknownMediaType {
                        what: format!("manifest {}", desc.digest),
                        media_type: "nested index".into(),
                    }),
                }
            }
        }
    }

    // ---- garbage collection ----

    /// Removes blobs and block images no reference or lease keeps, and stale temp files.
    pub fn prune(&self) -> Result<PruneReport> {
        let _gc = self.exclusive_lock("gc.lock")?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_disks = BTreeSet::new();
        let mut live: BTreeSet<Digest> = self.refs()?.into_values().collect();
        let leases = self.dir.join("leases");
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
        let blobs = self.dir.join("blobs/sha256");
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
        let blobs = self.dir.join("blobs/sha256");
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
        let (bytes, inodes) = du(&self.dir);
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
