//! Container paths as host paths under the rootfs, resolved the way the
//! container would resolve them.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::InitError;

/// `path` (absolute in the container) as a host path under `root`, with
/// every symlink on the way resolved as the container would: an absolute
/// target restarts at `root`, `..` never climbs above it. The image and the
/// other containers' volumes are not trusted to point inside.
///
/// Written here because no crate in the tree does scoped resolution; it only
/// runs before the container starts, so nothing inside can race it.
pub fn resolve_in(root: &Path, path: &str) -> Result<PathBuf, InitError> {
    let mut out = root.to_path_buf();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                if out != root {
                    out.pop();
                }
                continue;
            }
            _ => {}
        }
        let next = out.join(&comp);
        match next.symlink_metadata() {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(InitError::SymlinkLoop { path: path.into() });
                }
                let target = std::fs::read_link(&next).map_err(|source| InitError::Readlink {
                    path: next.clone(),
                    source,
                })?;
                let t = target.as_os_str().as_bytes();
                if t.starts_with(b"/") {
                    out = root.to_path_buf();
                }
                for c in String::from_utf8_lossy(t)
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                {
                    pending.push(c.to_owned());
                }
            }
            _ => out = next,
        }
    }
    Ok(out)
}

/// [`resolve_in`], then makes the directories on the way.
pub fn secure_dir(root: &Path, path: &str) -> Result<PathBuf, InitError> {
    let p = resolve_in(root, path)?;
    std::fs::create_dir_all(&p).map_err(|source| InitError::CreateDirs {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

/// [`resolve_in`], then makes the parent and an empty file to bind over.
pub fn secure_file(root: &Path, path: &str) -> Result<PathBuf, InitError> {
    let p = resolve_in(root, path)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|source| InitError::CreateDirs {
            path: parent.to_owned(),
            source,
        })?;
    }
    if p.symlink_metadata().is_err() {
        std::fs::File::create(&p).map_err(|source| InitError::CreateFile {
            path: p.clone(),
            source,
        })?;
    }
    Ok(p)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh directory for one test (named by pid, thread and `tag`).
    pub fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "vpod-init-test-{}-{:?}-{tag}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn resolve_in_stays_in_the_root() {
        let dir = tempdir("resolve");
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in(&root, "/abs/x").unwrap(), root.join("etc/x"));
        assert_eq!(resolve_in(&root, "/etc/up/y").unwrap(), root.join("etc/y"));
        assert_eq!(resolve_in(&root, "/../../z").unwrap(), root.join("z"));
        assert!(resolve_in(&root, "/loop/a").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
