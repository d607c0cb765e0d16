//! The container's root: kernel file systems, a minimal /dev, the config's
//! mounts and masks, the hostname, then pivot_root into the overlay.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::config::RootConfig;
use super::error::InitError;
use super::mount::{bind_mount, make_readonly, mask, mnt};
use super::path::secure_dir;
use super::syscall::Syscall;

/// Device nodes every container gets: (name, major, minor).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// /dev symlinks: (target, name).
const DEV_LINKS: [(&str, &str); 5] = [
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
];

/// Sets up `root` and makes it this process's /; runs in the container's
/// fresh mount namespace.
pub fn setup(sys: &dyn Syscall, root: &RootConfig) -> Result<(), InitError> {
    let r = &root.rootfs;
    let nosuid = MsFlags::MS_NOSUID;
    let nodev = MsFlags::MS_NODEV;
    let noexec = MsFlags::MS_NOEXEC;
    mnt(
        sys,
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    let proc_ = secure_dir(r, "/proc")?;
    mnt(
        sys,
        Some("proc"),
        &proc_,
        Some("proc"),
        nosuid | nodev | noexec,
        None,
    )?;
    let sys_dir = secure_dir(r, "/sys")?;
    let sys_ro = if root.privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    mnt(
        sys,
        Some("sysfs"),
        &sys_dir,
        Some("sysfs"),
        nosuid | nodev | noexec | sys_ro,
        None,
    )?;
    setup_dev(sys, root)?;

    for m in &root.mounts {
        bind_mount(sys, r, m)?;
    }
    if !root.privileged {
        for p in &root.masked_paths {
            mask(sys, r, p)?;
        }
        for p in &root.readonly_paths {
            make_readonly(sys, r, p)?;
        }
    }

    if !root.hostname.is_empty() {
        sys.sethostname(&root.hostname)
            .map_err(|source| InitError::Hostname {
                name: root.hostname.clone(),
                source,
            })?;
    }
    pivot(sys, r, root.read_only_rootfs)
}

/// A tmpfs /dev with the basic nodes, the container's devpts, a /dev/shm
/// and the usual symlinks.
fn setup_dev(sys: &dyn Syscall, root: &RootConfig) -> Result<(), InitError> {
    let nosuid = MsFlags::MS_NOSUID;
    let dev = secure_dir(&root.rootfs, "/dev")?;
    mnt(
        sys,
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        nosuid,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        let rw_all = Mode::from_bits_truncate(0o666);
        sys.mknod(
            &path,
            SFlag::S_IFCHR,
            rw_all,
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|source| InitError::Mknod {
            path: path.clone(),
            source,
        })?;
        // mknod obeys the umask; the nodes must be usable by any uid.
        let _ = sys.chmod(&path, rw_all);
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    let pts_src = root.pts.to_string_lossy().into_owned();
    mnt(sys, Some(&pts_src), &pts, None, MsFlags::MS_BIND, None)?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    let shm_size = if root.shm_size_bytes == 0 {
        64 << 20
    } else {
        root.shm_size_bytes
    };
    mnt(
        sys,
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size={shm_size}")),
    )?;
    for (target, link) in DEV_LINKS {
        sys.symlink(target, &dev.join(link))
            .map_err(|source| InitError::Symlink { link, source })?;
    }
    Ok(())
}

/// pivot_root(".", ".") stacks the old root under the new one; detaching
/// it leaves only the container's tree.
fn pivot(sys: &dyn Syscall, r: &Path, read_only: bool) -> Result<(), InitError> {
    let chdir = |path: &Path| {
        sys.chdir(path).map_err(|source| InitError::Chdir {
            path: path.to_owned(),
            source,
        })
    };
    chdir(r)?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(InitError::PivotRoot)?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(InitError::DetachOldRoot)?;
    chdir(Path::new("/"))?;
    if read_only {
        mnt(
            sys,
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// mkdir 0755; an existing directory is fine.
fn mkdir(p: &Path) -> Result<(), InitError> {
    match nix::unistd::mkdir(p, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(InitError::Mkdir {
            path: p.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
