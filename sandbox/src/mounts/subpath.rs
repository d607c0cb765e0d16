//! kubelet's subPath mounts: `<root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>` is a
//! bind mount kubelet made of a file or directory inside one of the pod's volumes. It is mapped
//! back to that volume (whose content the guest already gets) and the path inside it, found by
//! identity: the entry of the volume's visible tree with the mount's device and inode. Nothing
//! but the pod's own volume dir is read.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{MountClassifier, MountError, MountKind};

/// The volume plugins whose content reaches the guest, as kubelet names their dirs.
const PLUGINS: &[&str] = &[
    "kubernetes.io~secret",
    "kubernetes.io~projected",
    "kubernetes.io~configmap",
    "kubernetes.io~downward-api",
    "kubernetes.io~empty-dir",
];
/// How far into a volume a subPath is looked for (kubelet's volumes are small and shallow).
const MAX_DEPTH: usize = 16;
/// Most entries looked at in one volume.
const MAX_ENTRIES: usize = 16 << 10;

impl MountClassifier {
    /// The subPath mount `source` of this pod, as its volume and the path inside it; `None` when
    /// `source` is not under `volume-subpaths`.
    pub(super) fn kubelet_subpath(
        &self,
        destination: &Path,
        source: &Path,
        refuse: &dyn Fn(String) -> MountError,
    ) -> Result<Option<MountKind>, MountError> {
        let parts = self.under_pods(source);
        let [uid, "volume-subpaths", volume, _container, _index] = parts.as_slice() else {
            return Ok(None);
        };
        self.check_uid(uid, refuse)?;
        let invalid = |what: String| MountError::Invalid {
            destination: destination.to_owned(),
            what,
        };
        let pod = self.kubelet_root.join("pods").join(uid).join("volumes");
        let dirs: Vec<PathBuf> = PLUGINS
            .iter()
            .map(|p| pod.join(p).join(volume))
            .filter(|d| d.symlink_metadata().is_ok_and(|m| m.is_dir()))
            .collect();
        let [dir] = dirs.as_slice() else {
            return Err(invalid(format!(
                "subPath of volume {volume:?} (spec.containers[].volumeMounts[].subPath): {} \
                 volume dirs of that name under {}",
                dirs.len(),
                pod.display()
            )));
        };
        let volume_kind = self
            .kubelet_volume(destination, dir, refuse)?
            .ok_or_else(|| invalid(format!("{} is no kubelet volume", dir.display())))?;
        let meta = source
            .symlink_metadata()
            .map_err(|e| invalid(format!("subPath mount {}: {e}", source.display())))?;
        if meta.file_type().is_symlink() {
            return Err(refuse("; a subPath mount that is a symlink".into()));
        }
        let sub_path = find(dir, (meta.dev(), meta.ino())).ok_or_else(|| {
            invalid(format!(
                "subPath mount {} is no file or directory of volume {volume:?}",
                source.display()
            ))
        })?;
        Ok(Some(MountKind::SubPath {
            volume: Box::new(volume_kind),
            sub_path,
        }))
    }
}

/// The path under `root` (as the volume shows it: kubelet's `..`-prefixed bookkeeping skipped,
/// symlinks followed while they stay inside) of the entry with identity `id`.
fn find(root: &Path, id: (u64, u64)) -> Option<PathBuf> {
    let real_root = root.canonicalize().ok()?;
    let mut queue = VecDeque::from([(PathBuf::new(), 0usize)]);
    let mut seen = 0usize;
    while let Some((rel, depth)) = queue.pop_front() {
        for e in std::fs::read_dir(root.join(&rel)).ok()?.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return None;
            }
            let name = e.file_name();
            if name.to_string_lossy().starts_with("..") {
                continue;
            }
            let path = e.path();
            // Followed, but only to what lies in the volume itself.
            let Ok(real) = path.canonicalize() else {
                continue;
            };
            if !real.starts_with(&real_root) {
                continue;
            }
            let Ok(m) = std::fs::metadata(&real) else {
                continue;
            };
            let here = rel.join(&name);
            if (m.dev(), m.ino()) == id {
                return Some(here);
            }
            // Directories are walked through their visible name (a symlinked one too: it stays
            // inside, and the depth bounds a loop).
            if m.is_dir() && depth + 1 < MAX_DEPTH {
                queue.push_back((here, depth + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configMap dir as kubelet writes it: `..<ts>/` with the files, `..data` -> it, and each
    /// key a symlink through `..data`.
    fn config_map(dir: &Path) {
        let ts = dir.join("..2026_12_02_10_00_00.123");
        std::fs::create_dir_all(ts.join("nested")).unwrap();
        std::fs::write(ts.join("greeting"), "hello").unwrap();
        std::fs::write(ts.join("nested/deep"), "deep").unwrap();
        std::os::unix::fs::symlink("..2026_12_02_10_00_00.123", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/greeting", dir.join("greeting")).unwrap();
        std::os::unix::fs::symlink("..data/nested", dir.join("nested")).unwrap();
    }

    fn id(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_subpath_is_found_by_identity_under_its_visible_name() {
        let dir = std::env::temp_dir().join(format!("vpod-subpath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        config_map(&dir);
        let ts = dir.join("..2026_12_02_10_00_00.123");
        assert_eq!(
            find(&dir, id(&ts.join("greeting"))),
            Some("greeting".into())
        );
        assert_eq!(find(&dir, id(&ts.join("nested"))), Some("nested".into()));
        assert_eq!(
            find(&dir, id(&ts.join("nested/deep"))),
            Some("nested/deep".into())
        );
        // Anything else (the host's /etc/passwd, say) is no part of the volume.
        assert_eq!(find(&dir, id(Path::new("/etc/passwd"))), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
