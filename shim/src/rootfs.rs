//! A container's rootfs as containerd hands it (the overlayfs snapshotter's
//! mounts) turned into a read-only erofs disk for the guest.
//!
//! The lower dirs are committed snapshots: they never change, so the disk
//! is built once per set of lower dirs and cached. containerd's upper dir
//! stays empty: the container's writes go to its layer on the pod's
//! ephemeral disk in the guest, never to a host directory.
//!
//! containerd's snapshotter unpacked the layers, not vpod-images, so its
//! [`UnpackLimits`] were never applied: before a disk is built, the lower
//! dirs are walked (without following links) and their file bytes and
//! entries counted against the same limits (the shim config's
//! `max_image_size_mib` and `max_image_entries`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use vpod_images::UnpackLimits;

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
    /// The layers hold more than the shim config allows (`key` names its setting).
    #[error(
        "rootfs: the image's layers exceed the shim config's {key} ({limit}): {what}, at {path}"
    )]
    Limit {
        key: &'static str,
        limit: String,
        what: String,
        path: PathBuf,
    },
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

/// What the lower dirs hold: bytes of their regular files (sparse ones at their full size) and
/// entries, all layers summed. Fails at the first entry over `limits`. The walk keeps a stack of
/// dirs (no recursion: any depth) and never follows a symlink.
pub fn check_size(lowers: &[PathBuf], limits: &UnpackLimits) -> Result<(), RootfsError> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut dirs: Vec<PathBuf> = lowers.to_vec();
    while let Some(dir) = dirs.pop() {
        let io = |source| RootfsError::Io {
            op: format!("read {}", dir.display()),
            source,
        };
        for e in std::fs::read_dir(&dir).map_err(io)? {
            let e = e.map_err(io)?;
            let path = e.path();
            entries += 1;
            if entries > limits.max_entries {
                return Err(RootfsError::Limit {
                    key: "max_image_entries",
                    limit: limits.max_entries.to_string(),
                    what: format!("more than {} entries", limits.max_entries),
                    path,
                });
            }
            // DirEntry's type and lstat: a symlink is an entry, never followed.
            let meta = e.metadata().map_err(io)?;
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                bytes = bytes.saturating_add(meta.len());
                if bytes > limits.max_bytes {
                    return Err(RootfsError::Limit {
                        key: "max_image_size_mib",
                        limit: format!("{} MiB", limits.max_bytes >> 20),
                        what: format!("more than {} bytes of files", limits.max_bytes),
                        path,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The erofs disk of `mounts`, built into `cache` unless it is there; a disk to build is first
/// held to `limits` ([`check_size`]).
pub fn disk_within(
    mounts: &[Mount],
    cache: &Path,
    limits: &UnpackLimits,
) -> Result<RootfsDisk, RootfsError> {
    let lowers = lower_dirs(mounts)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lowers.hash(&mut h);
    let key = format!("{:016x}", h.finish());
    let serial = format!("img-{}", &key[..12]);
    let path = cache.join(format!("{key}.erofs"));
    if path.is_file() {
        return Ok(RootfsDisk { serial, path });
    }
    check_size(&lowers, limits)?;
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
        // The entry's own type (a symlink is not followed): only the shim's files and dirs.
        let Ok(kind) = e.file_type() else { continue };
        if name.ends_with(&tmp) && kind.is_file() {
            n += usize::from(std::fs::remove_file(&path).is_ok());
        } else if name.ends_with(&merged) && kind.is_dir() {
            let _ = umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
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
        let limits = crate::config::ShimConfig::default().unpack_limits();
        let d1 = disk_within(&mounts, &dir.join("cache"), &limits).unwrap();
        assert!(d1.serial.len() <= 20 && d1.serial.starts_with("img-"));
        let t1 = std::fs::metadata(&d1.path).unwrap().modified().unwrap();
        let d2 = disk_within(&mounts, &dir.join("cache"), &limits).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(std::fs::metadata(&d2.path).unwrap().modified().unwrap(), t1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 12 item 14: layers over the size or entry limit build no disk, with an error
    /// naming the shim config's key; within the limits they are counted, not refused.
    #[test]
    fn layers_over_the_limits_build_no_disk() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (l1, l2) = (dir.join("l1"), dir.join("l2"));
        std::fs::create_dir_all(l1.join("a/b")).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        // 1.5 MiB (sparse) in l1's deep dir, 1 MiB more in l2, a symlink that is not followed.
        std::fs::File::create(l1.join("a/b/big"))
            .unwrap()
            .set_len(3 << 19)
            .unwrap();
        std::fs::File::create(l2.join("more"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::os::unix::fs::symlink("/usr", l2.join("usr")).unwrap();
        let lowers = [l2.clone(), l1.clone()];
        let limits = |mib: u64, entries: u64| UnpackLimits {
            max_bytes: mib << 20,
            max_entries: entries,
            ..UnpackLimits::DEFAULT
        };
        // 5 entries (a, b, big, more, usr), 2.5 MiB: both layers count.
        check_size(&lowers, &limits(3, 5)).unwrap();
        let e = check_size(&lowers, &limits(2, 5)).unwrap_err();
        assert!(
            matches!(
                e,
                RootfsError::Limit {
                    key: "max_image_size_mib",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("max_image_size_mib (2 MiB)"), "{e}");
        let e = check_size(&lowers, &limits(3, 4)).unwrap_err();
        assert!(e.to_string().contains("max_image_entries (4)"), "{e}");
        // Through the disk builder: refused before mkfs, nothing left in the cache.
        let overlay = m(
            "overlay",
            "overlay",
            &[&format!("lowerdir={}:{}", l2.display(), l1.display())],
        );
        let cache = dir.join("cache");
        let e = disk_within(&[overlay], &cache, &limits(1, 100)).unwrap_err();
        assert!(e.to_string().contains("max_image_size_mib"), "{e}");
        assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().count() == 0);
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

    /// A leftover's name on a symlink is not the shim's: neither it nor what it names is touched.
    #[test]
    fn leftover_names_on_symlinks_are_left() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-leftlinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let target = dir.join("target");
        std::fs::create_dir_all(target.join("sub")).unwrap();
        std::fs::write(target.join("file"), "x").unwrap();
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(target.join("sub"), cache.join(".k.4242.merged")).unwrap();
        std::os::unix::fs::symlink(target.join("file"), cache.join(".k.4242.tmp")).unwrap();
        assert_eq!(remove_leftovers(&cache, 4242), 0);
        assert!(cache.join(".k.4242.merged").symlink_metadata().is_ok());
        assert!(cache.join(".k.4242.tmp").symlink_metadata().is_ok());
        assert!(target.join("sub").is_dir() && target.join("file").is_file());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
