//! Pod volumes pushed by the host. Memory volumes (secrets, tokens,
//! emptyDir medium Memory) get a tmpfs of their own under [`MEMORY_ROOT`], so
//! their bytes only ever live in guest RAM; disk volumes live on the
//! ephemeral disk.
//!
//! Pushed files use kubelet's atomic-writer layout: the files of generation
//! N sit in `..N/`, `..data` points at the current generation, and each
//! top-level name is a symlink through `..data`. Replacing the set is one
//! rename of `..data`, so a reader sees the old files or the new ones.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, MsFlags};
use vpod_agent_api::pb::{PutVolumeRequest, VolumeMedium};

/// tmpfs volumes, one mount each.
pub const MEMORY_ROOT: &str = "/run/vpod/volumes";
/// Size of a memory volume's tmpfs when the host gives none.
pub const DEFAULT_MEMORY_VOLUME_BYTES: u64 = 16 << 20;

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not a name the agent uses as a path component.
    #[error("volume name {0:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")]
    BadName(String),
    /// A file path that would leave the volume.
    #[error("volume {volume}: file path {path:?} must be relative, without '..'")]
    BadPath {
        /// The volume.
        volume: String,
        /// The file path.
        path: String,
    },
    /// PutVolume for an existing volume on another medium.
    #[error("volume {0} changed medium; remove the pod's use of it first")]
    MediumChanged(String),
    /// A container mount names a volume never put.
    #[error("no volume {0:?} (PutVolume it first)")]
    Unknown(String),
    /// A file system operation failed.
    #[error("volume {volume}: {op}: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// What the agent was doing.
        op: String,
        /// The failure.
        source: io::Error,
    },
    /// The ephemeral disk a disk-backed volume lives on.
    #[error(transparent)]
    Disk(#[from] crate::disks::DiskError),
}

#[derive(Debug)]
struct Volume {
    dir: PathBuf,
    medium: VolumeMedium,
    generation: u64,
    empty_dir: bool,
}

/// The pod's volumes, by name.
#[derive(Debug, Default)]
pub struct Volumes {
    map: Mutex<HashMap<String, Volume>>,
}

/// Whether `name` may name a volume (it becomes a path component).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_file_path(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !p.starts_with("..")
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

impl Volumes {
    /// Creates or replaces a volume; returns its generation.
    pub fn put(
        &self,
        req: &PutVolumeRequest,
        ephemeral: impl FnOnce() -> Result<PathBuf, crate::disks::DiskError>,
    ) -> Result<u64, VolumeError> {
        let name = &req.name;
        if !valid_name(name) {
            return Err(VolumeError::BadName(name.clone()));
        }
        for f in &req.files {
            if !valid_file_path(&f.path) {
                return Err(VolumeError::BadPath {
                    volume: name.clone(),
                    path: f.path.clone(),
                });
            }
        }
        let medium = req.medium();
        let io_err = |op: String| {
            let volume = name.clone();
            move |source| VolumeError::Io { volume, op, source }
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(name) {
            let dir = match medium {
                VolumeMedium::Memory => {
                    let dir = Path::new(MEMORY_ROOT).join(name);
                    std::fs::create_dir_all(&dir)
                        .map_err(io_err(format!("mkdir {}", dir.display())))?;
                    let size = match req.size_limit_bytes {
                        0 if req.empty_dir => String::new(),
                        0 => format!(",size={DEFAULT_MEMORY_VOLUME_BYTES}"),
                        n => format!(",size={n}"),
                    };
                    mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(format!("mode=0777{size}").as_str()),
                    )
                    .map_err(|e| VolumeError::Io {
                        volume: name.clone(),
                        op: "mount its tmpfs".into(),
                        source: e.into(),
                    })?;
                    dir
                }
                VolumeMedium::Disk => {
                    let dir = ephemeral()?.join("volumes").join(name);
                    std::fs::create_dir_all(&dir)
                        .map_err(io_err(format!("mkdir {}", dir.display())))?;
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
                    dir
                }
            };
            map.insert(
                name.clone(),
                Volume {
                    dir,
                    medium,
                    generation: 0,
                    empty_dir: req.empty_dir,
                },
            );
        }
        let vol = map.get_mut(name).expect("inserted above");
        if vol.medium != medium {
            return Err(VolumeError::MediumChanged(name.clone()));
        }
        if vol.empty_dir {
            // A plain writable directory: nothing to push, nothing to swap.
            vol.generation = 1;
            return Ok(1);
        }
        let gen = vol.generation + 1;
        write_generation(&vol.dir, gen, req).map_err(io_err(format!("write generation {gen}")))?;
        vol.generation = gen;
        Ok(gen)
    }

    /// The directory of volume `name` (and, with `sub_path`, a path in it
    /// as of now: kubelet's subPath mounts do not follow updates either).
    pub fn source(&self, name: &str, sub_path: &str) -> Result<PathBuf, VolumeError> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let vol = map
            .get(name)
            .ok_or_else(|| VolumeError::Unknown(name.to_owned()))?;
        if sub_path.is_empty() {
            return Ok(vol.dir.clone());
        }
        if !valid_file_path(sub_path) {
            return Err(VolumeError::BadPath {
                volume: name.to_owned(),
                path: sub_path.to_owned(),
            });
        }
        let base = if vol.empty_dir {
            vol.dir.clone()
        } else {
            vol.dir.join("..data")
        };
        let p = base.join(sub_path);
        if vol.empty_dir && !p.exists() {
            // kubelet makes a missing subPath of an emptyDir as a directory.
            std::fs::create_dir_all(&p).map_err(|source| VolumeError::Io {
                volume: name.to_owned(),
                op: format!("make subPath {sub_path}"),
                source,
            })?;
        }
        // Resolve `..data` now so the mount pins this generation.
        std::fs::canonicalize(&p).map_err(|source| VolumeError::Io {
            volume: name.to_owned(),
            op: format!("subPath {sub_path}"),
            source,
        })
    }
}

/// Writes `..<gen>/`, points `..data` at it, links the top-level names, and
/// drops what the previous generation had.
fn write_generation(dir: &Path, gen: u64, req: &PutVolumeRequest) -> io::Result<()> {
    let gen_name = format!("..{gen}");
    let gen_dir = dir.join(&gen_name);
    let _ = std::fs::remove_dir_all(&gen_dir);
    std::fs::create_dir(&gen_dir)?;
    let mut top = std::collections::BTreeSet::new();
    for f in &req.files {
        let path = gen_dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.data)?;
        let mode = if f.mode == 0 { 0o644 } else { f.mode & 0o7777 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some(Component::Normal(first)) = Path::new(&f.path).components().next() {
            top.insert(first.to_os_string());
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&gen_name, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for name in &top {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let s = name.to_string_lossy();
        if s.starts_with("..") {
            if s != "..data" && s != gen_name.as_str() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if !top.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpod_agent_api::pb::VolumeFile;

    fn req(files: &[(&str, &str)]) -> PutVolumeRequest {
        PutVolumeRequest {
            name: "v".into(),
            medium: VolumeMedium::Disk as i32,
            files: files
                .iter()
                .map(|(p, d)| VolumeFile {
                    path: (*p).into(),
                    data: d.as_bytes().to_vec(),
                    mode: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn replaces_the_file_set_atomically_through_data() {
        let root = std::env::temp_dir().join(format!("vpod-vol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let vols = Volumes::default();
        let eph = || Ok(root.clone());
        assert_eq!(vols.put(&req(&[("a", "1"), ("d/b", "2")]), eph).unwrap(), 1);
        let dir = root.join("volumes/v");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("d/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );

        let eph = || Ok(root.clone());
        assert_eq!(vols.put(&req(&[("a", "new")]), eph).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "new");
        assert!(!dir.join("d").exists(), "names gone from the new set go");
        assert!(!dir.join("..1").exists(), "the old generation goes");
        let sub = vols.source("v", "a").unwrap();
        assert_eq!(sub, std::fs::canonicalize(dir.join("..2/a")).unwrap());

        let eph = || Ok(root.clone());
        let bad = vols.put(&req(&[("../x", "1")]), eph).unwrap_err();
        assert!(bad.to_string().contains("without '..'"), "{bad}");
        assert!(matches!(
            vols.source("nope", ""),
            Err(VolumeError::Unknown(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(valid_name("secret-a.b_c"));
        for bad in ["", ".hidden", "a/b", "..", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_file_path("a/b.txt"));
        for bad in ["", "/abs", "../x", "a/../b", "..data", "./a"] {
            assert!(!valid_file_path(bad), "{bad}");
        }
    }
}
