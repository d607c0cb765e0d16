//! The tree being written: its root, where an entry's parent directory is (symlinks followed as
//! the container would see them, never out of the root), what a layer wrote, and the directory
//! mtimes applied once the last layer is in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::lutimes;
use nix::sys::time::TimeVal;

use crate::digest::Digest;

/// As in Linux path resolution: more symlinks than this in one path is a loop.
const MAX_SYMLINKS: usize = 40;

/// The directory layers are unpacked into.
#[derive(Debug)]
pub(super) struct Tree {
    root: PathBuf,
    /// Whether we run as root: ownership, device nodes and `security.*` xattrs need it.
    pub(super) is_root: bool,
    /// Directory mtimes, applied at the end (creating children changes them). Whatever is
    /// removed leaves this map too, so no path in it goes through a symlink.
    dir_times: BTreeMap<PathBuf, i64>,
}

/// Per-layer state: what this layer wrote (opaque dirs keep those) and a cache of resolved
/// parent dirs (dropped whenever a symlink appears or anything is removed).
pub(super) struct Layer<'a> {
    pub(super) digest: &'a Digest,
    pub(super) written: HashSet<PathBuf>,
    pub(super) resolved: HashMap<PathBuf, PathBuf>,
}

impl Layer<'_> {
    pub(super) fn new(digest: &Digest) -> Layer<'_> {
        Layer {
            digest,
            written: HashSet::new(),
            resolved: HashMap::new(),
        }
    }
}

impl Tree {
    /// `root` must exist (and is normally empty).
    pub(super) fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_owned(),
            is_root: nix::unistd::geteuid().is_root(),
            dir_times: BTreeMap::new(),
        }
    }

    /// Remembers `dir`'s mtime, set by [`Tree::finish`].
    pub(super) fn set_dir_time(&mut self, dir: PathBuf, mtime: i64) {
        self.dir_times.insert(dir, mtime);
    }

    /// Removes `p` (anything, a whole tree for a directory) and forgets what we knew under it.
    pub(super) fn remove(&mut self, layer: &mut Layer, p: &Path) -> io::Result<()> {
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

    /// Applies directory mtimes (once, after the last layer).
    pub(super) fn finish(self) {
        for (dir, mtime) in self.dir_times.iter().rev() {
            let t = TimeVal::new(mtime.max(&0).to_owned(), 0);
            // Best effort: a timestamp is not worth failing an image over.
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                let _ = lutimes(dir, &t, &t);
            }
        }
    }

    /// Resolves the directory `parts` (relative to the root) following symlinks inside the root.
    /// Absolute symlink targets are taken relative to the root (as inside the container); a `..`
    /// above the root is refused. With `create`, missing directories are made (0755); without
    /// it, a missing one gives `None`.
    pub(super) fn resolve(
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

/// Splits an entry path into plain components. `./` prefixes are fine; absolute paths and `..`
/// are refused (a layer has no business naming anything above its root).
pub(super) fn clean(path: &Path) -> std::result::Result<Vec<OsString>, String> {
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
}
