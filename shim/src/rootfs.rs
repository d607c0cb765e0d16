//! A container's rootfs as containerd hands it (the overlayfs snapshotter's
//! mounts) turned into a read-only erofs disk for the guest.
//!
//! The lower dirs are committed snapshots: they never change, so the disk
//! is built once per set of lower dirs and cached. containerd's upper dir
//! stays empty: the container's writes go to its layer on the pod's
//! ephemeral disk in the guest, never to a host directory.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs: expected one overlay or bind mount from the snapshotter, got {0}")]
    Unsupported(String),
    #[error("rootfs: overlay mount without lowerdir")]
    NoLower,
    #[error("rootfs: {op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("rootfs: build the erofs disk: {0}")]
    Build(#[from] vpod_images::Error),
}

/// The image disk of a container: where it is and the serial the guest finds it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsDisk {
    pub serial: String,
    pub path: PathBuf,
}

/// The lower dirs (top first) of the snapshotter's mounts.
pub fn lower_dirs(mounts: &[Mount]) -> Result<Vec<PathBuf>, RootfsError> {
    let [m] = mounts else {
        return Err(RootfsError::Unsupported(format!("{} mounts", mounts.len())));
    };
    match m.type_.as_str() {
        "overlay" => {
            let lower = m
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .ok_or(RootfsError::NoLower)?;
            Ok(lower.split(':').map(PathBuf::from).collect())
        }
        "bind" | "rbind" => Ok(vec![PathBuf::from(&m.source)]),
        other => Err(RootfsError::Unsupported(format!("type {other:?}"))),
    }
}

/// The erofs disk of `mounts`, built into `cache` unless it is there.
pub fn disk(mounts: &[Mount], cache: &Path) -> Result<RootfsDisk, RootfsError> {
    let lowers = lower_dirs(mounts)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lowers.hash(&mut h);
    let key = format!("{:016x}", h.finish());
    let serial = format!("img-{}", &key[..12]);
    let path = cache.join(format!("{key}.erofs"));
    if path.is_file() {
        return Ok(RootfsDisk { serial, path });
    }
    let io = |op: String| move |source| RootfsError::Io { op, source };
    std::fs::create_dir_all(cache).map_err(io(format!("mkdir {}", cache.display())))?;
    let tmp = cache.join(format!(".{key}.{}.tmp", std::process::id()));
    if lowers.len() == 1 {
        vpod_images::make_fs(vpod_images::FsType::detect(), &lowers[0], &tmp)?;
    } else {
        // Several layers: build from their merged, read-only view.
        let merged = cache.join(format!(".{key}.{}.merged", std::process::id()));
        std::fs::create_dir_all(&merged).map_err(io(format!("mkdir {}", merged.display())))?;
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(format!("lowerdir={lowerdir}").as_str()),
        )
        .map_err(|e| RootfsError::Io {
            op: format!("mount the layers at {}", merged.display()),
            source: e.into(),
        })?;
        let built = vpod_images::make_fs(vpod_images::FsType::detect(), &merged, &tmp);
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&merged);
        built?;
    }
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(RootfsDisk { serial, path })
}

/// Removes what a shim with pid `pid` left in `cache` when it died while
/// building a disk: its `.KEY.PID.tmp` files and `.KEY.PID.merged` mounts.
/// Returns how many it removed.
pub fn remove_leftovers(cache: &Path, pid: u32) -> usize {
    let (tmp, merged) = (format!(".{pid}.tmp"), format!(".{pid}.merged"));
    let mut n = 0;
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if name.ends_with(&tmp) {
            n += usize::from(std::fs::remove_file(&path).is_ok());
        } else if name.ends_with(&merged) {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            n += usize::from(std::fs::remove_dir(&path).is_ok());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, src: &str, opts: &[&str]) -> Mount {
        Mount {
            type_: t.into(),
            source: src.into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_lower_dirs_from_snapshot_mounts() {
        let o = m(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/w",
                "upperdir=/u",
                "lowerdir=/s/2/fs:/s/1/fs",
            ],
        );
        assert_eq!(
            lower_dirs(&[o]).unwrap(),
            [PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")]
        );
        assert_eq!(
            lower_dirs(&[m("bind", "/s/1/fs", &["ro", "rbind"])]).unwrap(),
            [PathBuf::from("/s/1/fs")]
        );
        assert!(matches!(lower_dirs(&[]), Err(RootfsError::Unsupported(_))));
        assert!(matches!(
            lower_dirs(&[m("overlay", "overlay", &["upperdir=/u"])]),
            Err(RootfsError::NoLower)
        ));
    }

    #[test]
    fn builds_once_and_caches() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layer = dir.join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/hello"), "hi").unwrap();
        let mounts = [m("bind", layer.to_str().unwrap(), &["ro"])];
        let d1 = disk(&mounts, &dir.join("cache")).unwrap();
        assert!(d1.serial.len() <= 20 && d1.serial.starts_with("img-"));
        let t1 = std::fs::metadata(&d1.path).unwrap().modified().unwrap();
        let d2 = disk(&mounts, &dir.join("cache")).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(std::fs::metadata(&d2.path).unwrap().modified().unwrap(), t1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 12 item 11: a dead shim's half-built disks go; others' stay.
    #[test]
    fn a_dead_shims_build_leftovers_are_removed() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".k1.4242.merged")).unwrap();
        std::fs::write(dir.join(".k1.4242.tmp"), "x").unwrap();
        std::fs::write(dir.join(".k2.4243.tmp"), "x").unwrap();
        std::fs::write(dir.join("k3.erofs"), "x").unwrap();
        assert_eq!(remove_leftovers(&dir, 4242), 2);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".k2.4243.tmp", "k3.erofs"]);
        assert_eq!(remove_leftovers(&dir.join("absent"), 4242), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
