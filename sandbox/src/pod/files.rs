//! The pod's directories and files on the host, made before its VM starts: the state dir (slot
//! files, vsock socket, console), the ephemeral disk's dir and the disk itself. Both dirs are 0700
//! and every file in them 0600, whatever the umask.

use std::path::{Path, PathBuf};

use vpod_vmm::DiskConfig;

use super::config::{PodConfig, EPHEMERAL_SERIAL};
use super::error::PodError;
use super::slots::Slot;
use crate::ephemeral;

/// Files of a pod: only its owner (root) reads them, whatever the umask.
pub const FILE_MODE: u32 = 0o600;
/// Directories of a pod.
pub const DIR_MODE: u32 = 0o700;
/// Size of an empty slot's placeholder file.
const SLOT_PLACEHOLDER_BYTES: usize = 4096;

/// Paths inside a pod's state directory.
pub mod paths {
    use std::path::{Path, PathBuf};

    /// The directory of the VM's vsock sockets: the only directory of the host a jailed VMM sees
    /// (owned by its uid).
    pub fn vsock_dir(dir: &Path) -> PathBuf {
        dir.join("vsock")
    }

    /// The VMM's vsock socket: how the host reaches the agent.
    pub fn vsock(dir: &Path) -> PathBuf {
        vsock_dir(dir).join("vsock.sock")
    }

    /// The guest's console output.
    pub fn console(dir: &Path) -> PathBuf {
        dir.join("console.log")
    }

    /// The ephemeral disk, in the dir the pod's config names for it.
    pub fn ephemeral(dir: &Path) -> PathBuf {
        dir.join("ephemeral.img")
    }

    /// Empty slot `n`'s placeholder file.
    pub fn slot(dir: &Path, n: usize) -> PathBuf {
        dir.join(format!("slot-{n}.img"))
    }
}

/// Hands `path` to the pod's VMM uid (its vsock directory and the host's sockets in it).
pub(crate) fn give_to(id: &str, path: &Path, uid: u32) -> Result<(), PodError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(|source| PodError::Io {
        id: id.into(),
        op: format!("chown {} to the VMM's uid {uid}", path.display()),
        source,
    })
}

/// Removes the directories it holds when dropped.
pub(crate) struct DirGuard(Vec<PathBuf>);

impl DirGuard {
    /// Keeps the directories: someone else (the booted pod) removes them now.
    pub(crate) fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        for d in self.0.drain(..) {
            remove_dir(&d);
        }
    }
}

pub(crate) fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Makes `dir` (which must not exist) and any missing parents 0700.
fn make_private_dir(id: &str, dir: &Path) -> Result<(), PodError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.exists() {
        return Err(PodError::Exists {
            id: id.into(),
            path: dir.to_owned(),
        });
    }
    let io = |source| PodError::Io {
        id: id.into(),
        op: format!("create {}", dir.display()),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)
}

/// Creates `path` (new) as a 0600 file with `data`.
fn write_private_file(id: &str, path: &Path, data: &[u8]) -> Result<(), PodError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| PodError::Io {
        id: id.into(),
        op: format!("write {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io)?;
    f.write_all(data).map_err(io)
}

/// The pod's directories and disks before its VM starts: the state dir, the ephemeral disk's
/// dir, the ephemeral disk, the empty slots and the console file (made here so it is 0600 when
/// the VMM opens it). Until the guard is disarmed, dropping it removes the dirs again.
pub(crate) fn prepare(cfg: &PodConfig) -> Result<(DirGuard, Vec<DiskConfig>, Vec<Slot>), PodError> {
    let id = cfg.id.as_str();
    make_private_dir(id, &cfg.dir)?;
    let mut cleanup = DirGuard(vec![cfg.dir.clone()]);
    let eph_dir = match &cfg.ephemeral_dir {
        Some(d) => {
            make_private_dir(id, d)?;
            cleanup.0.push(d.clone());
            d.as_path()
        }
        None => cfg.dir.as_path(),
    };
    let eph = paths::ephemeral(eph_dir);
    ephemeral::create(&eph, cfg.ephemeral_bytes).map_err(|source| PodError::Ephemeral {
        id: id.into(),
        source,
    })?;
    let mut disks = vec![DiskConfig {
        path: eph,
        read_only: false,
        id: Some(EPHEMERAL_SERIAL.into()),
    }];
    for img in &cfg.images {
        disks.push(DiskConfig {
            path: img.path.clone(),
            read_only: true,
            id: Some(img.serial.clone()),
        });
    }
    let mut slots = Vec::new();
    for n in 0..cfg.spare_slots {
        let path = paths::slot(&cfg.dir, n);
        write_private_file(id, &path, &[0u8; SLOT_PLACEHOLDER_BYTES])?;
        slots.push(Slot {
            index: disks.len(),
            serial: None,
        });
        disks.push(DiskConfig {
            path,
            read_only: true,
            id: Some(format!("slot-{n}")),
        });
    }
    write_private_file(id, &paths::console(&cfg.dir), b"")?;
    make_private_dir(id, &paths::vsock_dir(&cfg.dir))?;
    Ok((cleanup, disks, slots))
}
