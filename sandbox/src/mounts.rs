//! How each mount of a container's OCI spec reaches the guest.
//!
//! Every kubelet volume arrives as a bind mount of a host path, so the kind of volume is read from
//! kubelet's directory layout (`<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`) and the
//! runtime's own generated files. Only those paths are ever read on the host; any other bind
//! source is a hostPath volume and is refused. Mounts the guest makes itself (proc, sysfs, tmpfs,
//! devpts, mqueue, cgroup) pass through as they are.

use std::path::{Component, Path, PathBuf};

/// kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";

/// Where the guest gets a mount's content from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// `kubernetes.io~secret` and `kubernetes.io~projected` (service-account tokens): pushed over
    /// the agent API into a guest tmpfs, never written to any disk.
    Secret { source: PathBuf },
    /// `kubernetes.io~configmap` and `kubernetes.io~downward-api`: copied into the pod's
    /// ephemeral disk.
    ConfigMap { source: PathBuf },
    /// `kubernetes.io~empty-dir`: a directory on the pod's ephemeral disk, or a guest tmpfs when
    /// kubelet backs it with memory (medium: Memory).
    EmptyDir { name: String },
    /// Files kubelet or the CRI runtime writes for the container (`/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf`, the termination log): small, copied in.
    RuntimeFile { source: PathBuf },
    /// The pod's `/dev/shm`: a guest tmpfs.
    Shm,
    /// A filesystem the guest mounts itself (proc, sysfs, tmpfs, devpts, mqueue, cgroup...).
    Guest { fs_type: String },
}

/// A mount vpod refuses, with the Kubernetes field a user has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error(
        "mount {destination}: hostPath volume {host_path:?} is refused (spec.volumes[].hostPath): \
         a vpod pod shares no host filesystem; use an emptyDir, configMap, secret or an image"
    )]
    HostPath {
        destination: PathBuf,
        host_path: PathBuf,
    },
    #[error(
        "mount {destination}: volume plugin {plugin} (spec.volumes[]) is not supported by vpod: \
         only secret, projected, configMap, downwardAPI and emptyDir volumes reach the guest"
    )]
    UnsupportedVolume {
        destination: PathBuf,
        plugin: String,
    },
    #[error("mount {destination}: {what}")]
    Invalid { destination: PathBuf, what: String },
}

/// Classifies mounts by kubelet's path layout under `kubelet_root` and the CRI runtime's
/// generated files.
#[derive(Debug, Clone)]
pub struct MountClassifier {
    kubelet_root: PathBuf,
}

impl Default for MountClassifier {
    fn default() -> Self {
        MountClassifier::new(DEFAULT_KUBELET_ROOT)
    }
}

/// File names the CRI runtime (containerd, or vpod's own CRI server) generates per sandbox.
const RUNTIME_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

impl MountClassifier {
    pub fn new(kubelet_root: impl Into<PathBuf>) -> Self {
        MountClassifier {
            kubelet_root: kubelet_root.into(),
        }
    }

    /// Classifies one OCI mount.
    pub fn classify(&self, m: &oci_spec::runtime::Mount) -> Result<MountKind, MountError> {
        let destination = m.destination().clone();
        let fs_type = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let is_bind = fs_type == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let invalid = |what: &str| MountError::Invalid {
            destination: destination.clone(),
            what: what.to_owned(),
        };
        if !destination.is_absolute() {
            return Err(invalid("the destination is not an absolute path"));
        }
        if !is_bind {
            if fs_type.is_empty() {
                return Err(invalid("neither a type nor a bind option"));
            }
            return Ok(MountKind::Guest { fs_type });
        }
        let source = m
            .source()
            .clone()
            .ok_or_else(|| invalid("a bind mount without a source"))?;
        if !source.is_absolute() || source.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                "the bind source must be an absolute path without `..`",
            ));
        }
        if destination == Path::new("/dev/shm") && source.ends_with("shm") {
            return Ok(MountKind::Shm);
        }
        if let Some(kind) = self.kubelet_volume(&destination, &source)? {
            return Ok(kind);
        }
        if self.is_kubelet_file(&source) || is_runtime_file(&source) {
            return Ok(MountKind::RuntimeFile { source });
        }
        Err(MountError::HostPath {
            destination,
            host_path: source,
        })
    }

    /// `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>[/...]`.
    fn kubelet_volume(
        &self,
        destination: &Path,
        source: &Path,
    ) -> Result<Option<MountKind>, MountError> {
        let Ok(rest) = source.strip_prefix(self.kubelet_root.join("pods")) else {
            return Ok(None);
        };
        let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
        let [_uid, "volumes", plugin_dir, name, ..] = parts.as_slice() else {
            return Ok(None);
        };
        let Some(plugin) = plugin_dir.strip_prefix("kubernetes.io~") else {
            return Err(MountError::UnsupportedVolume {
                destination: destination.to_owned(),
                plugin: (*plugin_dir).to_owned(),
            });
        };
        let source = source.to_owned();
        Ok(Some(match plugin {
            "secret" | "projected" => MountKind::Secret { source },
            "configmap" | "downward-api" => MountKind::ConfigMap { source },
            "empty-dir" => MountKind::EmptyDir {
                name: (*name).to_owned(),
            },
            other => {
                return Err(MountError::UnsupportedVolume {
                    destination: destination.to_owned(),
                    plugin: other.to_owned(),
                })
            }
        }))
    }

    /// kubelet's per-pod files: `<root>/pods/<uid>/etc-hosts` and the termination log
    /// `<root>/pods/<uid>/containers/<name>/<id>`.
    fn is_kubelet_file(&self, source: &Path) -> bool {
        let Ok(rest) = source.strip_prefix(self.kubelet_root.join("pods")) else {
            return false;
        };
        let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
        matches!(
            parts.as_slice(),
            [_uid, "etc-hosts"] | [_uid, "containers", _, _]
        )
    }
}

/// containerd's CRI plugin writes `hosts`, `hostname` and `resolv.conf` under
/// `.../io.containerd.grpc.v1.cri/sandboxes/<id>/`.
fn is_runtime_file(source: &Path) -> bool {
    let parts: Vec<&str> = source.iter().filter_map(|c| c.to_str()).collect();
    matches!(
        parts.as_slice(),
        [.., "io.containerd.grpc.v1.cri", "sandboxes", _, file] if RUNTIME_FILES.contains(file)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn bind(src: &str, dst: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    const POD: &str = "/var/lib/kubelet/pods/0d3f6a1c-1111-2222-3333-444455556666";

    #[test]
    fn kubelet_volumes_are_classified_by_plugin() {
        let c = MountClassifier::default();
        let secret = format!("{POD}/volumes/kubernetes.io~secret/db-pass");
        assert_eq!(
            c.classify(&bind(&secret, "/etc/db")).unwrap(),
            MountKind::Secret {
                source: secret.clone().into()
            }
        );
        let token = format!("{POD}/volumes/kubernetes.io~projected/kube-api-access-x7k2p");
        assert!(matches!(
            c.classify(&bind(
                &token,
                "/var/run/secrets/kubernetes.io/serviceaccount"
            )),
            Ok(MountKind::Secret { .. })
        ));
        let cm = format!("{POD}/volumes/kubernetes.io~configmap/app-config");
        assert!(matches!(
            c.classify(&bind(&cm, "/etc/app")),
            Ok(MountKind::ConfigMap { .. })
        ));
        let dapi = format!("{POD}/volumes/kubernetes.io~downward-api/podinfo");
        assert!(matches!(
            c.classify(&bind(&dapi, "/etc/podinfo")),
            Ok(MountKind::ConfigMap { .. })
        ));
        let empty = format!("{POD}/volumes/kubernetes.io~empty-dir/cache");
        assert_eq!(
            c.classify(&bind(&empty, "/cache")).unwrap(),
            MountKind::EmptyDir {
                name: "cache".into()
            }
        );
    }

    #[test]
    fn runtime_files_pass_and_the_shm_mount_stays_in_the_guest() {
        let c = MountClassifier::default();
        for src in [
            format!("{POD}/etc-hosts"),
            format!("{POD}/containers/app/5f2a9c1e"),
            "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/resolv.conf".into(),
            "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/hostname".into(),
        ] {
            assert!(
                matches!(
                    c.classify(&bind(&src, "/etc/x")),
                    Ok(MountKind::RuntimeFile { .. })
                ),
                "{src}"
            );
        }
        let shm = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/shm";
        assert_eq!(c.classify(&bind(shm, "/dev/shm")).unwrap(), MountKind::Shm);
        let proc_ = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        assert_eq!(
            c.classify(&proc_).unwrap(),
            MountKind::Guest {
                fs_type: "proc".into()
            }
        );
    }

    #[test]
    fn host_paths_are_refused_naming_the_field() {
        let c = MountClassifier::default();
        for src in [
            "/etc",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods/x/volumes",
            "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/secret-key",
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/shm",
        ] {
            let e = c.classify(&bind(src, "/data")).unwrap_err();
            assert!(matches!(e, MountError::HostPath { .. }), "{src}: {e:?}");
            assert!(e.to_string().contains("hostPath"), "{e}");
        }
        // `..` can't climb out of a kubelet volume dir into the host.
        let sneaky = format!("{POD}/volumes/kubernetes.io~secret/../../../../../etc");
        assert!(matches!(
            c.classify(&bind(&sneaky, "/x")),
            Err(MountError::Invalid { .. })
        ));
    }

    #[test]
    fn other_volume_plugins_are_refused_by_name() {
        let c = MountClassifier::default();
        let e = c
            .classify(&bind(
                &format!("{POD}/volumes/kubernetes.io~nfs/share"),
                "/mnt",
            ))
            .unwrap_err();
        assert!(e.to_string().contains("nfs"), "{e}");
        let e = c
            .classify(&bind(
                &format!("{POD}/volumes/kubernetes.io~csi/pvc-1"),
                "/mnt",
            ))
            .unwrap_err();
        assert!(matches!(e, MountError::UnsupportedVolume { .. }));
    }

    #[test]
    fn a_custom_kubelet_root_is_honoured() {
        let c = MountClassifier::new("/data/kubelet");
        let s = "/data/kubelet/pods/u/volumes/kubernetes.io~secret/s";
        assert!(matches!(
            c.classify(&bind(s, "/s")),
            Ok(MountKind::Secret { .. })
        ));
        let s = format!("{POD}/volumes/kubernetes.io~secret/s");
        assert!(matches!(
            c.classify(&bind(&s, "/s")),
            Err(MountError::HostPath { .. })
        ));
    }
}
