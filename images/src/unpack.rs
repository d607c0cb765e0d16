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

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use nix::sys::stat::{lutimes, makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeVal;
use tar::EntryType;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// As in Linux path resolution: more symlinks than this in one path is a loop.
const MAX_SYMLINKS: usize = 40;
/// Longest entry path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

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
    pub bytes: u64,
    pub entries: u64,
}

/// Unpacks layers, in order, into one directory.
pub struct Unpacker {
    root: PathBuf,
    is_root: bool,
    /// Directory mtimes, applied at the end (creating children changes them). Whatever is
    /// removed leaves this map too, so no path in it goes through a symlink.
    dir_times: BTreeMap<PathBuf, i64>,
    limits: UnpackLimits,
    stats: UnpackStats,
}

/// Counts down what the tar reader may still take from the stream; a read past it fails.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
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

/// Wraps a layer stream in the decompressor its magic bytes call for.
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Per-layer state: what this layer wrote (opaque dirs keep those) and a cache of resolved
/// parent dirs (dropped whenever a symlink appears or anything is removed).
struct Layer<'a> {
    digest: &'a Digest,
    written: HashSet<PathBuf>,
    resolved: HashMap<PathBuf, PathBuf>,
}

impl Unpacker {
    /// `root` must exist (and is normally empty). Default limits.
    pub fn new(root: &Path) -> Unpacker {
        Unpacker::with_limits(root, UnpackLimits::default())
    }

    /// `root` must exist (and is normally empty).
    pub fn with_limits(root: &Path, limits: UnpackLimits) -> Unpacker {
        Unpacker {
            root: root.to_owned(),
            is_root: nix::unistd::geteuid().is_root(),
            dir_times: BTreeMap::new(),
            limits,
            stats: UnpackStats::default(),
        }
    }

    /// What the layers applied so far wrote.
    pub fn stats(&self) -> UnpackStats {
        self.stats
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
        let meta = self.limits.max_metadata_bytes;
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
        let mut layer = Layer {
            digest,
            written: HashSet::new(),
            resolved: HashMap::new(),
        };
        let mut buf = vec![0u8; 256 << 10];
        let entries = archive.entries().map_err(|e| over(&left, "", e))?;
        let mut last = String::new();
        for entry in entries {
            let mut entry = entry.map_err(|e| over(&left, &last, e))?;
            // File data is counted against max_bytes, not this budget.
            left.set(u64::MAX);
            let name = shown(&entry.path_bytes());
            let size = entry.size();
            let read = self.entry(&mut layer, &mut entry, &name, &mut buf)?;
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

    /// Removes `p` (anything, a whole tree for a directory) and forgets what we knew under it.
    fn remove(&mut self, layer: &mut Layer, p: &Path) -> io::Result<()> {
        remove_any(p)?;
        layer.resolved.clear();
        let under: Vec<PathBuf> = self
            .dir_times
            .range(p.to_path_buf()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(p))
            .cloned()
            .collect();
        for k in under {
            self.dir_times.remove(&k);
        }
        Ok(())
    }

    fn limit(
        &self,
        layer: &Layer,
        entry: &str,
        limit_name: &'static str,
        limit: u64,
        what: String,
    ) -> Error {
        Error::LimitExceeded {
            layer: layer.digest.clone(),
            entry: entry.to_owned(),
            limit_name,
            limit,
            what,
        }
    }

    /// Counts `bytes` more against `max_bytes`.
    fn charge(&mut self, layer: &Layer, entry: &str, bytes: u64) -> Result<()> {
        let total = self.stats.bytes.saturating_add(bytes);
        if total > self.limits.max_bytes {
            return Err(self.limit(
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

    /// Applies directory mtimes (call once after the last layer).
    pub fn finish(self) -> Result<()> {
        for (dir, mtime) in self.dir_times.iter().rev() {
            let t = TimeVal::new(mtime.max(&0).to_owned(), 0);
            // Best effort: a timestamp is not worth failing an image over.
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                let _ = lutimes(dir, &t, &t);
            }
        }
        Ok(())
    }

    fn bad(&self, layer: &Layer, entry: &str, reason: impl Into<String>) -> Error {
        Error::BadLayerEntry {
            layer: layer.digest.clone(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(
        &mut self,
        layer: &mut Layer,
        entry: &mut tar::Entry<R>,
        name: &str,
        buf: &mut [u8],
    ) -> Result<u64> {
        let io_err = |op: &'static str, source: io::Error| Error::LayerIo {
            layer: layer.digest.clone(),
            op,
            entry: name.to_owned(),
            source,
        };
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(self.limit(
                layer,
                name,
                "max_entries",
                self.limits.max_entries,
                "number of tar entries in the image".into(),
            ));
        }
        // What the entry claims (a sparse file its full size): refused before a byte is read.
        self.charge(layer, name, entry.size())?;
        if entry.path_bytes().len() > MAX_PATH {
            return Err(self.bad(layer, name, "path longer than PATH_MAX"));
        }
        let path = entry
            .path()
            .map_err(|e| io_err("read path", e))?
            .into_owned();
        let parts = clean(&path).map_err(|r| self.bad(layer, name, r))?;
        let Some((file_name, parent)) = parts.split_last() else {
            return Ok(0); // "./": the root itself, which we own
        };
        let kind = entry.header().entry_type();

        // Whiteouts: delete from lower layers, never create anything.
        if let Some(target) = file_name
            .to_str()
            .and_then(|s| s.strip_prefix(WHITEOUT_PREFIX))
        {
            let Some(dir) = self
                .resolve(layer, parent, false)
                .map_err(|r| self.bad(layer, name, r))?
            else {
                return Ok(0); // nothing below to hide
            };
            if file_name == OPAQUE {
                // Hides everything lower layers put there; this layer's entries stay (those
                // after the marker come later). Done now, while `dir` is known to be a directory
                // of ours: a later entry may turn a component of it into a symlink.
                let rd = fs::read_dir(&dir).map_err(|e| io_err("read dir (opaque)", e))?;
                let mut hidden = Vec::new();
                for child in rd {
                    let p = child.map_err(|e| io_err("read dir (opaque)", e))?.path();
                    if !layer.written.contains(&p) {
                        hidden.push(p);
                    }
                }
                for p in hidden {
                    self.remove(layer, &p)
                        .map_err(|e| io_err("remove (opaque dir)", e))?;
                }
            } else {
                if target.is_empty() || target == "." || target == ".." || target.contains('/') {
                    return Err(self.bad(layer, name, "invalid whiteout name"));
                }
                let victim = dir.join(target);
                if fs::symlink_metadata(&victim).is_ok() {
                    self.remove(layer, &victim)
                        .map_err(|e| io_err("remove (whiteout)", e))?;
                }
            }
            return Ok(0);
        }

        let dir = self
            .resolve(layer, parent, true)
            .map_err(|r| self.bad(layer, name, r))?
            .expect("created");
        let dest = dir.join(file_name);
        let existing = fs::symlink_metadata(&dest).ok();
        let header = entry.header();
        let mode = header.mode().map_err(|e| io_err("read mode", e))? & 0o7777;
        let (mut uid, mut gid, mut mtime) = (
            header.uid().unwrap_or(0),
            header.gid().unwrap_or(0),
            header.mtime().unwrap_or(0) as i64,
        );
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()?
                        .split('.')
                        .next()?
                        .parse()
                        .ok()
                };
                match key {
                    "uid" => uid = num().unwrap_or(uid),
                    "gid" => gid = num().unwrap_or(gid),
                    "mtime" => mtime = num().map_or(mtime, |v: u64| v as i64),
                    k => {
                        if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((x.to_owned(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let xattr_bytes: u64 = xattrs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        self.charge(layer, name, xattr_bytes)?;
        // Anything but a directory over a directory (or anything over a non-directory) replaces it.
        let keep_dir =
            kind == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            self.remove(layer, &dest)
                .map_err(|e| io_err("replace", e))?;
        }
        let mut read = 0u64;
        match kind {
            EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&dest).map_err(|e| io_err("mkdir", e))?;
                }
                self.dir_times.insert(dest.clone(), mtime);
            }
            // GNU sparse files come expanded (holes as zeros), counted at their full size.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(|e| io_err("create", e))?;
                loop {
                    let n = entry.read(buf).map_err(|e| io_err("read", e))?;
                    if n == 0 {
                        break;
                    }
                    read += n as u64;
                    f.write_all(&buf[..n]).map_err(|e| io_err("write", e))?;
                }
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
                let _ = f.set_modified(t);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| io_err("read link name", e))?
                    .ok_or_else(|| self.bad(layer, name, "symlink without a target"))?;
                symlink(&target, &dest).map_err(|e| io_err("symlink", e))?;
                layer.resolved.clear();
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| io_err("read link name", e))?
                    .ok_or_else(|| self.bad(layer, name, "hard link without a target"))?;
                let tparts = clean(&target)
                    .map_err(|r| self.bad(layer, name, format!("hard link target: {r}")))?;
                let Some((tname, tparent)) = tparts.split_last() else {
                    return Err(self.bad(layer, name, "hard link to the root"));
                };
                let tdir = self
                    .resolve(layer, tparent, false)
                    .map_err(|r| self.bad(layer, name, format!("hard link target: {r}")))?
                    .ok_or_else(|| self.bad(layer, name, "hard link target does not exist"))?;
                let src = tdir.join(tname);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.bad(layer, name, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => return Err(self.bad(layer, name, "hard link target does not exist")),
                }
                fs::hard_link(&src, &dest).map_err(|e| io_err("link", e))?;
                layer.written.insert(dest);
                // A hard link shares the target's inode: its metadata is the target's.
                return Ok(0);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Char => (SFlag::S_IFCHR, self.dev(entry)),
                    EntryType::Block => (SFlag::S_IFBLK, self.dev(entry)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                match mknod(&dest, sflag, Mode::from_bits_truncate(mode), dev) {
                    Ok(()) => {}
                    // Unprivileged unpacks (tests as a user) can't make device nodes: skip them.
                    Err(nix::Error::EPERM) if !self.is_root && sflag != SFlag::S_IFIFO => {
                        tracing::warn!(entry = name, "device node skipped: not root");
                        return Ok(0);
                    }
                    Err(e) => return Err(io_err("mknod", e.into())),
                }
            }
            other => {
                return Err(self.bad(layer, name, format!("unsupported tar entry type {other:?}")))
            }
        }
        layer.written.insert(dest.clone());

        // Ownership before mode: chown clears set-id bits.
        if self.is_root {
            std::os::unix::fs::lchown(&dest, Some(uid as u32), Some(gid as u32))
                .map_err(|e| io_err("chown", e))?;
        }
        if kind != EntryType::Symlink {
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                .map_err(|e| io_err("chmod", e))?;
        } else {
            let t = TimeVal::new(mtime.max(0), 0);
            let _ = lutimes(&dest, &t, &t);
        }
        for (k, v) in xattrs {
            // xattr::set does not follow symlinks (lsetxattr).
            if let Err(e) = xattr::set(&dest, &k, &v) {
                if self.is_root || !k.starts_with("security.") {
                    return Err(io_err("set xattr", e));
                }
            }
        }
        Ok(read)
    }

    fn dev<R: Read>(&self, entry: &tar::Entry<R>) -> u64 {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        makedev(major as u64, minor as u64)
    }

    /// Resolves the directory `parts` (relative to the root) following symlinks inside the root.
    /// Absolute symlink targets are taken relative to the root (as inside the container); a `..`
    /// above the root is refused. With `create`, missing directories are made (0755); without
    /// it, a missing one gives `None`.
    fn resolve(
        &self,
        layer: &mut Layer,
        parts: &[OsString],
        create: bool,
    ) -> std::result::Result<Option<PathBuf>, String> {
        let key: PathBuf = parts.iter().collect();
        if let Some(p) = layer.resolved.get(&key) {
            return Ok(Some(p.clone()));
        }
        let mut todo: std::collections::VecDeque<OsString> = parts.iter().cloned().collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == "." || c.is_empty() {
                continue;
            }
            if c == ".." {
                if cur.pop().is_none() {
                    return Err("path escapes the root through a symlink".into());
                }
                continue;
            }
            let mut p = self.root.clone();
            p.extend(cur.iter());
            p.push(&c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => cur.push(c),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let target = fs::read_link(&p).map_err(|e| format!("readlink: {e}"))?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    let mut new: std::collections::VecDeque<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_owned()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    new.extend(todo);
                    todo = new;
                }
                Ok(_) => {
                    return Err(format!(
                        "{} is not a directory",
                        cur.iter()
                            .chain([&c])
                            .map(|s| s.to_string_lossy())
                            .collect::<Vec<_>>()
                            .join("/")
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
                    cur.push(c);
                }
                Err(e) => return Err(format!("stat {}: {e}", p.display())),
            }
        }
        let mut p = self.root.clone();
        p.extend(cur.iter());
        layer.resolved.insert(key, p.clone());
        Ok(Some(p))
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

/// Splits an entry path into plain components. `./` prefixes are fine; absolute paths and `..`
/// are refused (a layer has no business naming anything above its root).
fn clean(path: &Path) -> std::result::Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path refused (outside the image root)".into())
            }
            Component::ParentDir => {
                return Err("'..' in path refused (outside the image root)".into())
            }
        }
    }
    Ok(out)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A `Read` over chunks sent by another thread.
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a blob, hashing and decompressing it, on its own thread: the caller writes files
/// meanwhile (two cores: hashing + inflating on one, tar + file writes on the other).
fn spawn_decompressor(
    mut blob: HashingReader<std::fs::File>,
) -> (ChannelReader, JoinHandle<io::Result<Digest>>) {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(16);
    let handle = std::thread::spawn(move || {
        let res = (|| {
            let mut dec = decompress(BufReader::with_capacity(1 << 20, &mut blob))?;
            loop {
                let mut buf = vec![0u8; 256 << 10];
                let mut n = 0;
                while n < buf.len() {
                    match dec.read(&mut buf[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() {
                    return Err(io::Error::other("unpack stopped"));
                }
            }
        })();
        match res {
            Ok(()) => blob.finish().map(|(d, _)| d),
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    });
    (
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
        handle,
    )
}

/// Unpacks `layers` (blobs in `store`) into `root`, verifying each blob's digest as it streams.
/// Within the store's [`UnpackLimits`].
pub fn unpack_image(store: &crate::Store, layers: &[Digest], root: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_refuses_escapes() {
        assert_eq!(clean(Path::new("./a/b")).unwrap(), vec!["a", "b"]);
        assert!(clean(Path::new("../../etc/passwd")).is_err());
        assert!(clean(Path::new("a/../../x")).is_err());
        assert!(clean(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn reads_all_three_compressions() {
        let data = b"hello world".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for input in [data.clone(), gz, zs] {
            let mut out = Vec::new();
            decompress(&input[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }
}
