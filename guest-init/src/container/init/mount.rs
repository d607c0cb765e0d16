//! One mount at a time: the config's bind and tmpfs mounts, masked paths,
//! read-only paths, each resolved inside the rootfs first.

use std::path::Path;

use nix::mount::MsFlags;

use super::config::BindMount;
use super::error::InitError;
use super::path::{resolve_in, secure_dir, secure_file};
use super::syscall::Syscall;

/// mount(2) with the error naming what and where.
pub fn mnt(
    sys: &dyn Syscall,
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    sys.mount(src, target, fstype, flags, data)
        .map_err(|source| InitError::Mount {
            what: fstype.or(src).unwrap_or("bind").to_owned(),
            target: target.to_owned(),
            source,
        })
}

/// A volume or directory bound at its destination (a file over a file),
/// or a fresh tmpfs; read-only if asked.
pub fn bind_mount(sys: &dyn Syscall, root: &Path, m: &BindMount) -> Result<(), InitError> {
    let is_file = m
        .source
        .as_ref()
        .is_some_and(|s| s.metadata().map(|md| md.is_file()).unwrap_or(false));
    let dest = if is_file {
        secure_file(root, &m.destination)?
    } else {
        secure_dir(root, &m.destination)?
    };
    let (nosuid, nodev) = (MsFlags::MS_NOSUID, MsFlags::MS_NODEV);
    match &m.source {
        Some(src) => {
            let src = src.to_string_lossy();
            mnt(
                sys,
                Some(&src),
                &dest,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if m.read_only {
                mnt(
                    sys,
                    None,
                    &dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid | nodev,
                    None,
                )?;
            }
        }
        None => {
            let size = if m.tmpfs_size_bytes > 0 {
                format!(",size={}", m.tmpfs_size_bytes)
            } else {
                String::new()
            };
            let ro = if m.read_only {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            mnt(
                sys,
                Some("tmpfs"),
                &dest,
                Some("tmpfs"),
                nosuid | nodev | ro,
                Some(&format!("mode=1777{size}")),
            )?;
        }
    }
    Ok(())
}

/// Hides `path` if it exists: a directory under an empty read-only tmpfs,
/// anything else under /dev/null.
pub fn mask(sys: &dyn Syscall, root: &Path, path: &str) -> Result<(), InitError> {
    let Ok(path) = resolve_in(root, path) else {
        return Ok(());
    };
    match path.symlink_metadata() {
        Ok(md) if md.is_dir() => mnt(
            sys,
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => mnt(sys, Some("/dev/null"), &path, None, MsFlags::MS_BIND, None),
        Err(_) => Ok(()),
    }
}

/// Binds `path` over itself and remounts it read-only, if it exists.
pub fn make_readonly(sys: &dyn Syscall, root: &Path, path: &str) -> Result<(), InitError> {
    let Ok(path) = resolve_in(root, path) else {
        return Ok(());
    };
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    let path_s = path.to_string_lossy().into_owned();
    mnt(
        sys,
        Some(&path_s),
        &path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mnt(
        sys,
        None,
        &path,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
}
