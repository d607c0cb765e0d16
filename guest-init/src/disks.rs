//! The pod's block devices: found by their virtio-blk serial (the host's
//! disk id), mounted once. Images are read-only erofs; the ephemeral disk is
//! ext4 made by the host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the ephemeral disk is mounted.
pub const EPHEMERAL_ROOT: &str = "/run/vpod/ephemeral";
/// Where image disks are mounted, one directory per serial.
pub const IMAGES_ROOT: &str = "/run/vpod/images";

/// A disk that was just swapped into a slot shows its new serial and size a
/// moment after the host's config-change interrupt: keep looking this long.
const DISK_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a disk is not there, or not mounted.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk carries this serial.
    #[error("no virtio-blk disk with serial {0:?} (is it attached to the VM?)")]
    NotFound(String),
    /// mount(2) of a disk failed.
    #[error("mount {what} {dev} on {target}: {source}")]
    Mount {
        /// Which disk (image, ephemeral).
        what: &'static str,
        /// The block device.
        dev: String,
        /// The mount point.
        target: String,
        /// The failure.
        source: nix::errno::Errno,
    },
    /// A container needs the ephemeral disk before MountEphemeral ran.
    #[error("the pod's ephemeral disk is not mounted (MountEphemeral first)")]
    NoEphemeral,
    /// Reading /sys or making a mount point.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The `/dev/vdX` whose serial is `serial`, if any right now.
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("vd") {
            continue;
        }
        let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        let size: u64 = std::fs::read_to_string(e.path().join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if s.trim_end_matches(['\n', '\0']) == serial && size > 0 {
            return Some(Path::new("/dev").join(&*name));
        }
    }
    None
}

/// Mounts of image disks, counted by the containers using them.
#[derive(Debug, Default)]
pub struct Disks {
    images: Mutex<HashMap<String, (PathBuf, usize)>>,
    ephemeral: Mutex<Option<PathBuf>>,
}

impl Disks {
    /// Mounts the ext4 disk with serial `serial` at [`EPHEMERAL_ROOT`] (once).
    pub fn mount_ephemeral(&self, serial: &str) -> Result<PathBuf, DiskError> {
        let mut eph = self.ephemeral.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = &*eph {
            return Ok(p.clone());
        }
        let dev = wait_for_disk(serial)?;
        let target = PathBuf::from(EPHEMERAL_ROOT);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(&dev),
            &target,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|source| DiskError::Mount {
            what: "ephemeral ext4",
            dev: dev.display().to_string(),
            target: target.display().to_string(),
            source,
        })?;
        *eph = Some(target.clone());
        Ok(target)
    }

    /// The ephemeral disk's mount point, once MountEphemeral has run.
    pub fn ephemeral(&self) -> Result<PathBuf, DiskError> {
        self.ephemeral
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(DiskError::NoEphemeral)
    }

    /// Mounts image disk `serial` read-only (or counts one more user).
    pub fn acquire_image(&self, serial: &str) -> Result<PathBuf, DiskError> {
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, users)) = images.get_mut(serial) {
            *users += 1;
            return Ok(path.clone());
        }
        let dev = wait_for_disk(serial)?;
        let target = Path::new(IMAGES_ROOT).join(serial);
        std::fs::create_dir_all(&target)?;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
        // A late disk's new size can trail its serial by a moment: retry.
        let t0 = Instant::now();
        loop {
            // erofs normally; ext4 when the host had no mkfs.erofs.
            let res = mount(Some(&dev), &target, Some("erofs"), flags, None::<&str>)
                .or_else(|_| mount(Some(&dev), &target, Some("ext4"), flags, Some("noload")));
            match res {
                Ok(()) => break,
                Err(source) if t0.elapsed() > DISK_APPEAR_TIMEOUT => {
                    return Err(DiskError::Mount {
                        what: "image (erofs or ext4)",
                        dev: dev.display().to_string(),
                        target: target.display().to_string(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        images.insert(serial.to_owned(), (target.clone(), 1));
        Ok(target)
    }

    /// One user less; the last one unmounts the image.
    pub fn release_image(&self, serial: &str) {
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, users)) = images.get_mut(serial) {
            *users -= 1;
            if *users == 0 {
                let _ = umount2(path.as_path(), MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(&*path);
                images.remove(serial);
            }
        }
    }
}

fn wait_for_disk(serial: &str) -> Result<PathBuf, DiskError> {
    let t0 = Instant::now();
    loop {
        if let Some(dev) = find_by_serial(Path::new("/sys/block"), serial) {
            return Ok(dev);
        }
        if t0.elapsed() > DISK_APPEAR_TIMEOUT {
            return Err(DiskError::NotFound(serial.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disks_by_serial_and_skips_empty_ones() {
        let root = std::env::temp_dir().join(format!("vpod-sysblock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dev, serial, size) in [
            ("vda", "eph\n", "2048\n"),
            ("vdb", "img-1234", "100"),
            ("vdc", "slot-0", "0"),
            ("loop0", "img-9", "8"),
        ] {
            std::fs::create_dir_all(root.join(dev)).unwrap();
            std::fs::write(root.join(dev).join("serial"), serial).unwrap();
            std::fs::write(root.join(dev).join("size"), size).unwrap();
        }
        assert_eq!(find_by_serial(&root, "eph"), Some("/dev/vda".into()));
        assert_eq!(find_by_serial(&root, "img-1234"), Some("/dev/vdb".into()));
        assert_eq!(find_by_serial(&root, "slot-0"), None);
        assert_eq!(find_by_serial(&root, "img-9"), None);
        std::fs::remove_dir_all(root).unwrap();
    }
}
