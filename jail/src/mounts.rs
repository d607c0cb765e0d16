//! The jail's file system: a private mount table, a tmpfs root on the spec's directory holding
//! only what the spec lists (bind mounts of files and directories, device nodes of devices),
//! `pivot_root` into it, the old root detached, and the root remounted read-only.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{cvt, JailError};
use crate::spec::{Bind, JailSpec};

/// Builds the root and pivots into it. Needs a mount namespace of our own (the caller unshared).
pub(crate) fn build_and_pivot(spec: &JailSpec) -> Result<(), JailError> {
    // Nothing we mount may propagate back to the host's tree (or the host's into ours).
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| mount_err("making the mount tree private at", "/", e))?;
    prepare_root_dir(&spec.root)?;
    let sources = spec
        .binds
        .iter()
        .map(|b| {
            fs::metadata(&b.host).map_err(|source| JailError::BindSource {
                path: b.host.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The root's own device nodes (see `device_node`) only work on a mount without nodev; with
    // none, the root gets nodev too. Either way it ends read-only and the VMM can't mknod.
    let has_devices = sources.iter().any(is_device);
    let root_flags =
        libc::MS_NOSUID | libc::MS_NOEXEC | if has_devices { 0 } else { libc::MS_NODEV };
    let inodes = 16 + 4 * spec.binds.len();
    let data = format!(
        "size={},nr_inodes={inodes},mode=0755,uid=0,gid=0",
        spec.root_size
    );
    mount(
        Some(Path::new("tmpfs")),
        &spec.root,
        Some("tmpfs"),
        root_flags,
        Some(&data),
    )
    .map_err(|e| mount_err("mounting the root tmpfs on", &spec.root, e))?;
    for (b, meta) in spec.binds.iter().zip(&sources) {
        if is_device(meta) {
            device_node(&spec.root, b, meta, spec.uid, spec.gid)?;
        } else {
            bind(&spec.root, b, meta)?;
        }
    }
    if spec.mount_proc {
        let target = spec.root.join("proc");
        mkdir(&target, 0o555)?;
        mount(
            Some(Path::new("proc")),
            &target,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )
        .map_err(|e| mount_err("mounting proc on", &target, e))?;
    }
    pivot(&spec.root)?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | root_flags,
        None,
    )
    .map_err(|e| mount_err("remounting read-only", "/", e))?;
    Ok(())
}

/// The root directory on the host: created 0700 if missing, else it must be an empty directory
/// (not a symlink), so a jail never shows what a previous user left there.
fn prepare_root_dir(root: &Path) -> Result<(), JailError> {
    let err = |what: String| JailError::Root {
        path: root.to_path_buf(),
        what,
    };
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = root.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| err(format!("creating its parent: {e}")))?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(root)
                .map_err(|e| err(format!("creating it: {e}")))
        }
        Err(e) => Err(err(e.to_string())),
        Ok(m) if !m.is_dir() => Err(err("exists and is not a directory".into())),
        Ok(_) => {
            let mut entries = fs::read_dir(root).map_err(|e| err(e.to_string()))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(err("exists and is not empty".into())),
            }
        }
    }
}

fn is_device(meta: &fs::Metadata) -> bool {
    let t = meta.file_type();
    t.is_char_device() || t.is_block_device()
}

/// A device (`/dev/kvm`, `/dev/net/tun`, a block device) is not bound but made anew in the
/// root: the same device number, owned by the jail's uid/gid, mode 0600 (0400 if read-only).
/// A bind would carry the host node's owner and mode (often root 0600), which the unprivileged
/// VMM couldn't open; the host's node is left as it is.
fn device_node(
    root: &Path,
    b: &Bind,
    meta: &fs::Metadata,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    let target = root.join(&b.name);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| mount_err("creating the device node's parent", parent, e))?;
    }
    let kind = if meta.file_type().is_char_device() {
        libc::S_IFCHR
    } else {
        libc::S_IFBLK
    };
    let perm = if b.read_only { 0o400 } else { 0o600 };
    let c_target = cpath(&target).map_err(|e| mount_err("creating the device node", &target, e))?;
    // SAFETY: a valid NUL-terminated path; mknod creates one inode in our private tmpfs.
    cvt(unsafe { libc::mknod(c_target.as_ptr(), kind | perm, meta.rdev()) })
        .map_err(|e| mount_err("creating the device node", &target, e))?;
    // SAFETY: as above; the node was just created by us.
    cvt(unsafe { libc::chown(c_target.as_ptr(), uid, gid) })
        .map_err(|e| mount_err("handing the device node to the jail's uid", &target, e))?;
    Ok(())
}

/// One bind: a mount point of the right kind in the tmpfs, the bind, then a remount with the
/// flags (a bind ignores flags other than MS_REC on its first mount call).
fn bind(root: &Path, b: &Bind, meta: &fs::Metadata) -> Result<(), JailError> {
    let target = root.join(&b.name);
    if meta.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .create(&target)
            .map_err(|e| mount_err("creating the mount point", &target, e))?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| mount_err("creating the mount point's parent", parent, e))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| mount_err("creating the mount point", &target, e))?;
    }
    mount(Some(&b.host), &target, None, libc::MS_BIND, None)
        .map_err(|e| mount_err("bind-mounting", &b.host, e))?;
    let mut flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    if b.read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags, None).map_err(|e| mount_err("remounting", &target, e))
}

/// `pivot_root(".", ".")` from inside the new root: the old root ends up stacked on `/` and is
/// detached at once, so no `old_root` directory is ever created in the jail.
fn pivot(root: &Path) -> Result<(), JailError> {
    let err = |step, source| JailError::Pivot {
        step,
        path: root.to_path_buf(),
        source,
    };
    let dot = c".";
    let c_root = cpath(root).map_err(|e| err("chdir", e))?;
    // SAFETY: `c_root` is a valid NUL-terminated path for the duration of the call.
    cvt(unsafe { libc::chdir(c_root.as_ptr()) }).map_err(|e| err("chdir", e))?;
    // SAFETY: both arguments are valid NUL-terminated paths.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if ret != 0 {
        return Err(err("pivot_root", io::Error::last_os_error()));
    }
    // SAFETY: as above.
    cvt(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| err("detaching the old root", e))?;
    // SAFETY: as above.
    cvt(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(|e| err("chdir /", e))?;
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), JailError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| mount_err("creating the mount point", path, e))
}

fn mount_err(step: &'static str, path: impl Into<PathBuf>, source: io::Error) -> JailError {
    JailError::Mount {
        step,
        path: path.into(),
        source,
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cpath).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype
        .map(|s| CString::new(s).map_err(|_| io::ErrorKind::InvalidInput))
        .transpose()?;
    let data = data
        .map(|s| CString::new(s).map_err(|_| io::ErrorKind::InvalidInput))
        .transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    cvt(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_dir_must_be_missing_or_empty() {
        let base = std::env::temp_dir().join(format!("vpod-jail-rootdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("a/root");
        prepare_root_dir(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        prepare_root_dir(&root).unwrap();
        fs::write(root.join("x"), b"").unwrap();
        assert!(matches!(
            prepare_root_dir(&root),
            Err(JailError::Root { .. })
        ));
        assert!(matches!(
            prepare_root_dir(&root.join("x")),
            Err(JailError::Root { .. })
        ));
        fs::remove_dir_all(&base).unwrap();
    }
}
