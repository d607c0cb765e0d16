//! One tar entry applied to the tree: a whiteout deletes from lower layers; anything else is
//! created (directory, file, symlink, hard link, device node or FIFO), replacing what was there,
//! and gets its owner, mode, times and xattrs.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use nix::sys::stat::{lutimes, makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeVal;
use tar::EntryType;

use super::limits::Tally;
use super::tree::{clean, Layer, Tree};
use crate::digest::Digest;
use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Longest entry path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// The layer and entry an error is about.
#[derive(Clone, Copy)]
struct At<'a> {
    layer: &'a Digest,
    entry: &'a str,
}

impl At<'_> {
    fn io(self, op: &'static str, source: io::Error) -> Error {
        Error::LayerIo {
            layer: self.layer.clone(),
            op,
            entry: self.entry.to_owned(),
            source,
        }
    }

    fn bad(self, reason: impl Into<String>) -> Error {
        Error::BadLayerEntry {
            layer: self.layer.clone(),
            entry: self.entry.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What the header (and its PAX records) says about an entry.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// Fails only on an unreadable mode; other fields fall back to 0 (PAX records override the
    /// header's uid, gid and mtime).
    fn read<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
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
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// What the xattrs cost against `max_bytes`.
    fn xattr_bytes(&self) -> u64 {
        self.xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

/// A (non-whiteout) entry: what it creates, and where.
struct Node {
    dest: PathBuf,
    kind: EntryType,
    /// A directory over an existing directory: it stays, with its content.
    keep_dir: bool,
    meta: Meta,
}

/// Applies one entry of `layer`, counted in `tally`. Returns the bytes of its data read (the walk
/// skips the rest).
pub(super) fn apply<R: Read>(
    tree: &mut Tree,
    tally: &mut Tally,
    layer: &mut Layer,
    entry: &mut tar::Entry<R>,
    name: &str,
    buf: &mut [u8],
) -> Result<u64> {
    let at = At {
        layer: layer.digest,
        entry: name,
    };
    tally.count_entry(at.layer, name)?;
    // What the entry claims (a sparse file its full size): refused before a byte is read.
    tally.charge(at.layer, name, entry.size())?;
    if entry.path_bytes().len() > MAX_PATH {
        return Err(at.bad("path longer than PATH_MAX"));
    }
    let path = entry
        .path()
        .map_err(|e| at.io("read path", e))?
        .into_owned();
    let parts = clean(&path).map_err(|r| at.bad(r))?;
    let Some((file_name, parent)) = parts.split_last() else {
        return Ok(0); // "./": the root itself, which we own
    };
    let kind = entry.header().entry_type();

    // Whiteouts: delete from lower layers, never create anything.
    if let Some(target) = file_name
        .to_str()
        .and_then(|s| s.strip_prefix(WHITEOUT_PREFIX))
    {
        return whiteout(tree, layer, at, parent, file_name, target).map(|()| 0);
    }

    let dir = tree
        .resolve(layer, parent, true)
        .map_err(|r| at.bad(r))?
        .expect("created");
    let dest = dir.join(file_name);
    let existing = fs::symlink_metadata(&dest).ok();
    let meta = Meta::read(entry).map_err(|e| at.io("read mode", e))?;
    tally.charge(at.layer, name, meta.xattr_bytes())?;
    // Anything but a directory over a directory (or anything over a non-directory) replaces it.
    let keep_dir = kind == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir());
    if existing.is_some() && !keep_dir {
        tree.remove(layer, &dest).map_err(|e| at.io("replace", e))?;
    }
    let node = Node {
        dest,
        kind,
        keep_dir,
        meta,
    };
    let Some(read) = create(tree, layer, at, entry, &node, buf)? else {
        return Ok(0);
    };
    layer.written.insert(node.dest.clone());
    set_meta(tree.is_root, at, &node)?;
    Ok(read)
}

/// A whiteout `parent/.wh.<target>` removes `target` of a lower layer; the opaque marker
/// `parent/.wh..wh..opq` removes everything lower layers put in `parent`.
fn whiteout(
    tree: &mut Tree,
    layer: &mut Layer,
    at: At,
    parent: &[OsString],
    file_name: &OsString,
    target: &str,
) -> Result<()> {
    let Some(dir) = tree.resolve(layer, parent, false).map_err(|r| at.bad(r))? else {
        return Ok(()); // nothing below to hide
    };
    if file_name == OPAQUE {
        // Hides everything lower layers put there; this layer's entries stay (those
        // after the marker come later). Done now, while `dir` is known to be a directory
        // of ours: a later entry may turn a component of it into a symlink.
        let rd = fs::read_dir(&dir).map_err(|e| at.io("read dir (opaque)", e))?;
        let mut hidden = Vec::new();
        for child in rd {
            let p = child.map_err(|e| at.io("read dir (opaque)", e))?.path();
            if !layer.written.contains(&p) {
                hidden.push(p);
            }
        }
        for p in hidden {
            tree.remove(layer, &p)
                .map_err(|e| at.io("remove (opaque dir)", e))?;
        }
    } else {
        if target.is_empty() || target == "." || target == ".." || target.contains('/') {
            return Err(at.bad("invalid whiteout name"));
        }
        let victim = dir.join(target);
        if fs::symlink_metadata(&victim).is_ok() {
            tree.remove(layer, &victim)
                .map_err(|e| at.io("remove (whiteout)", e))?;
        }
    }
    Ok(())
}

/// Creates the node. Returns the bytes of data read, or `None` when the entry is done: a hard
/// link (it shares its target's metadata) or a device node skipped when not root.
fn create<R: Read>(
    tree: &mut Tree,
    layer: &mut Layer,
    at: At,
    entry: &mut tar::Entry<R>,
    node: &Node,
    buf: &mut [u8],
) -> Result<Option<u64>> {
    let dest = &node.dest;
    let mut read = 0u64;
    match node.kind {
        EntryType::Directory => {
            if !node.keep_dir {
                fs::create_dir(dest).map_err(|e| at.io("mkdir", e))?;
            }
            tree.set_dir_time(dest.clone(), node.meta.mtime);
        }
        // GNU sparse files come expanded (holes as zeros), counted at their full size.
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(dest)
                .map_err(|e| at.io("create", e))?;
            loop {
                let n = entry.read(buf).map_err(|e| at.io("read", e))?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                f.write_all(&buf[..n]).map_err(|e| at.io("write", e))?;
            }
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(node.meta.mtime.max(0) as u64);
            let _ = f.set_modified(t);
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| at.io("read link name", e))?
                .ok_or_else(|| at.bad("symlink without a target"))?;
            symlink(&target, dest).map_err(|e| at.io("symlink", e))?;
            layer.resolved.clear();
        }
        EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(|e| at.io("read link name", e))?
                .ok_or_else(|| at.bad("hard link without a target"))?;
            let tparts = clean(&target).map_err(|r| at.bad(format!("hard link target: {r}")))?;
            let Some((tname, tparent)) = tparts.split_last() else {
                return Err(at.bad("hard link to the root"));
            };
            let tdir = tree
                .resolve(layer, tparent, false)
                .map_err(|r| at.bad(format!("hard link target: {r}")))?
                .ok_or_else(|| at.bad("hard link target does not exist"))?;
            let src = tdir.join(tname);
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_dir() => return Err(at.bad("hard link to a directory")),
                Ok(_) => {}
                Err(_) => return Err(at.bad("hard link target does not exist")),
            }
            fs::hard_link(&src, dest).map_err(|e| at.io("link", e))?;
            layer.written.insert(dest.clone());
            // A hard link shares the target's inode: its metadata is the target's.
            return Ok(None);
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let (sflag, dev) = match node.kind {
                EntryType::Char => (SFlag::S_IFCHR, dev(entry)),
                EntryType::Block => (SFlag::S_IFBLK, dev(entry)),
                _ => (SFlag::S_IFIFO, 0),
            };
            match mknod(dest, sflag, Mode::from_bits_truncate(node.meta.mode), dev) {
                Ok(()) => {}
                // Unprivileged unpacks (tests as a user) can't make device nodes: skip them.
                Err(nix::Error::EPERM) if !tree.is_root && sflag != SFlag::S_IFIFO => {
                    tracing::warn!(entry = at.entry, "device node skipped: not root");
                    return Ok(None);
                }
                Err(e) => return Err(at.io("mknod", e.into())),
            }
        }
        other => return Err(at.bad(format!("unsupported tar entry type {other:?}"))),
    }
    Ok(Some(read))
}

/// Owner, mode (or a symlink's times) and xattrs of a created node.
fn set_meta(is_root: bool, at: At, node: &Node) -> Result<()> {
    let (dest, meta) = (&node.dest, &node.meta);
    // Ownership before mode: chown clears set-id bits.
    if is_root {
        std::os::unix::fs::lchown(dest, Some(meta.uid as u32), Some(meta.gid as u32))
            .map_err(|e| at.io("chown", e))?;
    }
    if node.kind != EntryType::Symlink {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| at.io("chmod", e))?;
    } else {
        let t = TimeVal::new(meta.mtime.max(0), 0);
        let _ = lutimes(dest, &t, &t);
    }
    for (k, v) in &meta.xattrs {
        // xattr::set does not follow symlinks (lsetxattr).
        if let Err(e) = xattr::set(dest, k, v) {
            if is_root || !k.starts_with("security.") {
                return Err(at.io("set xattr", e));
            }
        }
    }
    Ok(())
}

/// A device entry's device number.
fn dev<R: Read>(entry: &tar::Entry<R>) -> u64 {
    let h = entry.header();
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    makedev(major as u64, minor as u64)
}
