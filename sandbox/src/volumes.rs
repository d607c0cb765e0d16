//! Host-side volumes pushed into the guest: a host directory (kubelet's
//! secret or configMap dir, or a directory named on `vpod run`) is read into
//! memory and sent over the agent API. Nothing is written on the host; for
//! secrets nothing is written on any disk at all (they land in a guest
//! tmpfs).
//!
//! Kubelet updates these directories atomically by swapping its `..data`
//! symlink; [`watch`] polls the content and pushes a new generation when it
//! changed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vpod_agent_api::pb::{PutVolumeRequest, VolumeFile, VolumeMedium};

use crate::pod::{Pod, PodError};

/// Largest volume pushed (kubelet caps a secret at 1 MiB; configMaps too).
pub const MAX_VOLUME_BYTES: u64 = 8 << 20;
/// How often [`watch`] looks for changes.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum HostVolumeError {
    #[error("volume {name}: read {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume {name}: {path} holds more than {MAX_VOLUME_BYTES} bytes")]
    TooBig { name: String, path: PathBuf },
}

/// A host directory pushed as a volume.
#[derive(Debug, Clone)]
pub struct HostVolume {
    pub name: String,
    pub dir: PathBuf,
    pub medium: VolumeMedium,
}

impl HostVolume {
    /// The directory's files (following kubelet's symlinks, skipping its
    /// `..`-prefixed bookkeeping entries).
    pub fn read(&self) -> Result<Vec<VolumeFile>, HostVolumeError> {
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        self.walk(&self.dir, "", &mut files, &mut total)?;
        Ok(files.into_values().collect())
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        files: &mut BTreeMap<String, VolumeFile>,
        total: &mut u64,
    ) -> Result<(), HostVolumeError> {
        let err = |path: &Path| {
            let name = self.name.clone();
            let path = path.to_path_buf();
            move |source| HostVolumeError::Read { name, path, source }
        };
        for e in std::fs::read_dir(dir).map_err(err(dir))? {
            let e = e.map_err(err(dir))?;
            let fname = e.file_name().to_string_lossy().into_owned();
            if fname.starts_with("..") {
                continue;
            }
            let path = e.path();
            let md = std::fs::metadata(&path).map_err(err(&path))?;
            let rel = format!("{prefix}{fname}");
            if md.is_dir() {
                self.walk(&path, &format!("{rel}/"), files, total)?;
            } else if md.is_file() {
                *total += md.len();
                if *total > MAX_VOLUME_BYTES {
                    return Err(HostVolumeError::TooBig {
                        name: self.name.clone(),
                        path: self.dir.clone(),
                    });
                }
                let data = std::fs::read(&path).map_err(err(&path))?;
                use std::os::unix::fs::PermissionsExt;
                files.insert(
                    rel.clone(),
                    VolumeFile {
                        path: rel,
                        data,
                        mode: md.permissions().mode() & 0o777,
                    },
                );
            }
        }
        Ok(())
    }

    pub fn request(&self, files: Vec<VolumeFile>) -> PutVolumeRequest {
        PutVolumeRequest {
            name: self.name.clone(),
            medium: self.medium as i32,
            files,
            size_limit_bytes: 0,
            empty_dir: false,
        }
    }
}

/// A fingerprint of a file set, to notice changes without keeping copies.
pub fn fingerprint(files: &[VolumeFile]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.path.hash(&mut h);
        f.data.hash(&mut h);
        f.mode.hash(&mut h);
    }
    h.finish()
}

/// Pushes `vol` now; returns its fingerprint.
pub async fn push(pod: &Pod, vol: &HostVolume) -> Result<u64, PushError> {
    let files = vol.read()?;
    let fp = fingerprint(&files);
    pod.put_volume(vol.request(files)).await?;
    Ok(fp)
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Host(#[from] HostVolumeError),
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// Re-pushes each volume whenever its host content changes, until the pod
/// is gone. Read errors (kubelet mid-update, dir removed) are retried on
/// the next poll; `on_push` hears of every push.
pub async fn watch(
    pod: Arc<Pod>,
    vols: Vec<(HostVolume, u64)>,
    poll: Duration,
    on_push: impl Fn(&HostVolume, Result<u64, &PushError>) + Send + 'static,
) {
    let mut vols = vols;
    loop {
        tokio::time::sleep(poll).await;
        if pod.vm_exit().is_some() {
            return;
        }
        for (vol, last) in vols.iter_mut() {
            let Ok(files) = vol.read() else { continue };
            let fp = fingerprint(&files);
            if fp == *last {
                continue;
            }
            match pod.put_volume(vol.request(files)).await {
                Ok(gen) => {
                    *last = fp;
                    on_push(vol, Ok(gen));
                }
                Err(e) => on_push(vol, Err(&PushError::Pod(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_kubelet_style_dir() {
        let dir = std::env::temp_dir().join(format!("vpod-hostvol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gen = dir.join("..2026_11_23");
        std::fs::create_dir_all(gen.join("sub")).unwrap();
        std::fs::write(gen.join("token"), "s3cret").unwrap();
        std::fs::write(gen.join("sub/x"), "y").unwrap();
        std::os::unix::fs::symlink("..2026_11_23", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        std::os::unix::fs::symlink("..data/sub", dir.join("sub")).unwrap();
        let v = HostVolume {
            name: "s".into(),
            dir: dir.clone(),
            medium: VolumeMedium::Memory,
        };
        let files = v.read().unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["sub/x", "token"]);
        assert_eq!(files[1].data, b"s3cret");
        let fp = fingerprint(&files);
        std::fs::write(gen.join("token"), "changed").unwrap();
        assert_ne!(fingerprint(&v.read().unwrap()), fp);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
