//! How each mount of a container's OCI spec reaches the guest.
//!
//! Every kubelet volume arrives as a bind mount of a host path, so the kind of volume is read from
//! kubelet's directory layout (`<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`) and the
//! runtime's own generated files. Only those paths, and only those of this pod (its UID, from
//! containerd's `io.kubernetes.cri.sandbox-uid` annotation) and of this sandbox (its id,
//! `io.kubernetes.cri.sandbox-id`) are ever read on the host; any other bind source (another
//! pod's secret included) is a hostPath volume and is refused. A source is resolved on the host
//! (symlinks included) and must still lie where its path says. Mounts the guest makes itself
//! (proc, sysfs, tmpfs, devpts, mqueue, cgroup) pass through as they are.
//!
//! A front door that makes the spec itself (`vpod run --secret NAME=DIR`) names its own host
//! dirs as volumes ([`MountClassifier::with_secret_dir`]): those exact paths, never a spec's word.

use std::path::{Component, Path, PathBuf};

mod subpath;

/// kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// containerd's default `root` and `state` dirs: its CRI plugin writes a sandbox's `hosts`,
/// `hostname` and `resolv.conf` under `<dir>/io.containerd.grpc.v1.cri/sandboxes/<id>/`.
pub const DEFAULT_CONTAINERD_DIRS: &[&str] = &["/var/lib/containerd", "/run/containerd"];
/// The pod's UID, on every sandbox and container spec containerd's CRI plugin writes.
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The sandbox's id, on the sandbox's spec and on each of its containers'.
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Where containerd's CRI plugin keeps its per-sandbox dirs, under each containerd dir.
const CRI_SANDBOXES: &str = "io.containerd.grpc.v1.cri/sandboxes";

/// Where the guest gets a mount's content from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// `kubernetes.io~secret` and `kubernetes.io~projected` (service-account tokens): pushed over
    /// the agent API into a guest tmpfs, never written to any disk.
    Secret {
        /// The host dir, resolved.
        source: PathBuf,
    },
    /// `kubernetes.io~configmap` and `kubernetes.io~downward-api`: copied into the pod's
    /// ephemeral disk.
    ConfigMap {
        /// The host dir, resolved.
        source: PathBuf,
    },
    /// `kubernetes.io~empty-dir`: a directory on the pod's ephemeral disk, or a guest tmpfs when
    /// kubelet backs it with memory (medium: Memory).
    EmptyDir {
        /// The volume's name in the pod.
        name: String,
    },
    /// Files kubelet or the CRI runtime writes for the container (`/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf`, the termination log): small, copied in.
    RuntimeFile {
        /// The host file, resolved.
        source: PathBuf,
        /// It is the container's termination log (`<root>/pods/<uid>/containers/<name>/<id>`):
        /// what the container writes there is copied back to `source` when it exits.
        termination_log: bool,
    },
    /// kubelet's subPath of a volume (`<root>/pods/<uid>/volume-subpaths/...`): a file or
    /// directory inside one of the kinds above, mounted on its own.
    SubPath {
        /// The volume it lies in.
        volume: Box<MountKind>,
        /// Its path inside the volume, as the volume shows it.
        sub_path: PathBuf,
    },
    /// The pod's `/dev/shm`: a guest tmpfs.
    Shm,
    /// A filesystem the guest mounts itself (proc, sysfs, tmpfs, devpts, mqueue, cgroup...).
    Guest {
        /// The filesystem type (`proc`, `tmpfs`, ...).
        fs_type: String,
    },
}

/// A mount vpod refuses, with the Kubernetes field a user has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error(
        "mount {destination}: hostPath volume {host_path:?} is refused (spec.volumes[].hostPath){reason}: \
         a vpod pod shares no host filesystem; use an emptyDir, configMap, secret or an image"
    )]
    /// A bind mount of a host path that is no volume of this pod.
    HostPath {
        /// The mount's path in the container.
        destination: PathBuf,
        /// The host path.
        host_path: PathBuf,
        /// Why a path that looks like a kubelet or runtime file is not this pod's ("" if it
        /// looks like nothing vpod knows); starts with "; ".
        reason: String,
    },
    #[error(
        "mount {destination}: volume plugin {plugin} (spec.volumes[]) is not supported by vpod: \
         only secret, projected, configMap, downwardAPI and emptyDir volumes reach the guest"
    )]
    /// A kubelet volume of a plugin vpod does not carry into the guest.
    UnsupportedVolume {
        /// The mount's path in the container.
        destination: PathBuf,
        /// The volume plugin (`kubernetes.io~csi`, ...).
        plugin: String,
    },
    /// A mount that makes no sense (relative destination, bind without a source, ...).
    #[error("mount {destination}: {what}")]
    Invalid {
        /// The mount's path in the container.
        destination: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Classifies mounts by kubelet's path layout under `kubelet_root` and the CRI runtime's
/// generated files, for one pod: only its own volumes and files are recognized.
///
/// It also knows the pod's host pid ([`MountClassifier::with_pod_pid`]): containerd names the
/// sandbox's namespaces as `/proc/<pid>/ns/*` in each container's spec, and those are the pod's
/// own (see [`crate::policy`]).
#[derive(Debug, Clone)]
pub struct MountClassifier {
    kubelet_root: PathBuf,
    containerd_dirs: Vec<PathBuf>,
    pod_uid: Option<String>,
    sandbox_id: Option<String>,
    pod_pid: Option<u32>,
    /// Host dirs the caller named as volumes: `Secret` or `ConfigMap` of exactly that source.
    named: Vec<MountKind>,
}

impl Default for MountClassifier {
    fn default() -> Self {
        MountClassifier::new(DEFAULT_KUBELET_ROOT)
    }
}

/// File names the CRI runtime (containerd) generates per sandbox.
const RUNTIME_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

/// `s` if it can name one directory (a pod UID, a sandbox id): not empty, no `/`, not `.`/`..`.
fn one_component(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    ok.then(|| s.to_owned())
}

impl MountClassifier {
    /// A classifier that knows no pod yet: every kubelet volume and runtime file is refused until
    /// [`MountClassifier::for_pod`] or [`MountClassifier::for_spec`] says whose they may be.
    pub fn new(kubelet_root: impl Into<PathBuf>) -> Self {
        MountClassifier {
            kubelet_root: kubelet_root.into(),
            containerd_dirs: DEFAULT_CONTAINERD_DIRS.iter().map(PathBuf::from).collect(),
            pod_uid: None,
            sandbox_id: None,
            pod_pid: None,
            named: Vec::new(),
        }
    }

    /// containerd's `root` and `state` dirs (default [`DEFAULT_CONTAINERD_DIRS`]).
    pub fn with_containerd_dirs(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        self.containerd_dirs = dirs.into_iter().collect();
        self
    }

    /// The pod whose kubelet volumes and files (`uid`) and whose sandbox's runtime files
    /// (`sandbox_id`) may be read. A value that is not one path component counts as none.
    pub fn for_pod(mut self, uid: Option<&str>, sandbox_id: Option<&str>) -> Self {
        self.pod_uid = uid.and_then(one_component);
        self.sandbox_id = sandbox_id.and_then(one_component);
        self
    }

    /// [`MountClassifier::for_pod`] with containerd's annotations on a sandbox's or container's
    /// spec (`io.kubernetes.cri.sandbox-uid`, `io.kubernetes.cri.sandbox-id`).
    pub fn for_spec(self, spec: &oci_spec::runtime::Spec) -> Self {
        let ann = spec.annotations().clone().unwrap_or_default();
        let uid = ann.get(ANN_SANDBOX_UID).map(String::as_str);
        let id = ann.get(ANN_SANDBOX_ID).map(String::as_str);
        self.for_pod(uid, id)
    }

    /// The host pid containerd was given for the pod's sandbox (the shim's own): a container's
    /// namespace path `/proc/<pid>/ns/<type>` names the pod's own namespace.
    pub fn with_pod_pid(mut self, pid: u32) -> Self {
        self.pod_pid = Some(pid);
        self
    }

    /// Host dir `dir` is a secret volume: a bind mount of exactly `dir` (as given) goes into a
    /// guest tmpfs. For a caller that makes the spec from its own flags (`vpod run --secret`);
    /// containerd's specs name kubelet's dirs instead.
    pub fn with_secret_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.named.push(MountKind::Secret { source: dir.into() });
        self
    }

    /// Host dir `dir` is a configMap volume (see [`MountClassifier::with_secret_dir`]): copied
    /// into the pod's disk.
    pub fn with_config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.named.push(MountKind::ConfigMap { source: dir.into() });
        self
    }

    /// Knows `file` as a runtime file of this pod (a CRI server's own resolv.conf): copied in.
    pub fn with_runtime_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.named.push(MountKind::RuntimeFile {
            source: file.into(),
            termination_log: false,
        });
        self
    }

    /// The pod's host pid, if known ([`MountClassifier::with_pod_pid`]).
    pub fn pod_pid(&self) -> Option<u32> {
        self.pod_pid
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
        if let Some(kind) = self.named.iter().find(|k| match k {
            MountKind::Secret { source: s }
            | MountKind::ConfigMap { source: s }
            | MountKind::RuntimeFile { source: s, .. } => *s == source,
            _ => false,
        }) {
            return Ok(kind.clone());
        }
        if !source.is_absolute() || source.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                "the bind source must be an absolute path without `..`",
            ));
        }
        // `a//b/./c` is `a/b/c`: the layout is matched on the normalized path.
        let source: PathBuf = source.components().collect();
        if destination == Path::new("/dev/shm") && source.ends_with("shm") {
            // Nothing of the host is read: the guest makes a tmpfs.
            return Ok(MountKind::Shm);
        }
        let refuse = |reason: String| MountError::HostPath {
            destination: destination.clone(),
            host_path: source.clone(),
            reason,
        };
        if let Some(kind) = self.kubelet_volume(&destination, &source, &refuse)? {
            return Ok(kind);
        }
        if let Some(kind) = self.kubelet_subpath(&destination, &source, &refuse)? {
            return Ok(kind);
        }
        if let Some(rel) = self.kubelet_file(&source, &refuse)? {
            let termination_log = rel.iter().nth(2).is_some_and(|c| c == "containers");
            let source = self.resolve(&destination, &source, &self.kubelet_root, &rel, true)?;
            return Ok(MountKind::RuntimeFile {
                source,
                termination_log,
            });
        }
        if let Some((dir, rel)) = self.runtime_file(&source, &refuse)? {
            let source = self.resolve(&destination, &source, dir, &rel, true)?;
            return Ok(MountKind::RuntimeFile {
                source,
                termination_log: false,
            });
        }
        Err(refuse(String::new()))
    }

    /// Refuses `uid` unless it is this pod's.
    fn check_uid(
        &self,
        uid: &str,
        refuse: &dyn Fn(String) -> MountError,
    ) -> Result<(), MountError> {
        match &self.pod_uid {
            Some(mine) if mine == uid => Ok(()),
            Some(mine) => Err(refuse(format!(
                "; it belongs to pod {uid}, not to this pod ({mine})"
            ))),
            None => Err(refuse(format!(
                "; it belongs to pod {uid} and this pod's UID is unknown (no {ANN_SANDBOX_UID} \
                 annotation)"
            ))),
        }
    }

    /// `source`, resolved on the host, if it still is `base.join(rel)` (`exact`) or lies under it;
    /// `base` itself may be a symlink (a kubelet root on another disk), nothing below it may lead
    /// elsewhere.
    fn resolve(
        &self,
        destination: &Path,
        source: &Path,
        base: &Path,
        rel: &Path,
        exact: bool,
    ) -> Result<PathBuf, MountError> {
        let unresolvable = |p: &Path, e: std::io::Error| MountError::Invalid {
            destination: destination.to_owned(),
            what: format!("cannot resolve {}: {e}", p.display()),
        };
        let base = std::fs::canonicalize(base).map_err(|e| unresolvable(base, e))?;
        let real = std::fs::canonicalize(source).map_err(|e| unresolvable(source, e))?;
        let expected = base.join(rel);
        let inside = if exact {
            real == expected
        } else {
            real.starts_with(&expected)
        };
        if !inside {
            return Err(MountError::HostPath {
                destination: destination.to_owned(),
                host_path: source.to_owned(),
                reason: format!(
                    "; it resolves to {}, outside {}",
                    real.display(),
                    expected.display()
                ),
            });
        }
        Ok(real)
    }

    /// The components of `source` below `<root>/pods` (none when it is not there).
    fn under_pods<'a>(&self, source: &'a Path) -> Vec<&'a str> {
        source
            .strip_prefix(self.kubelet_root.join("pods"))
            .map(|rest| rest.iter().filter_map(|c| c.to_str()).collect())
            .unwrap_or_default()
    }

    /// `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>[/...]`.
    fn kubelet_volume(
        &self,
        destination: &Path,
        source: &Path,
        refuse: &dyn Fn(String) -> MountError,
    ) -> Result<Option<MountKind>, MountError> {
        let parts = self.under_pods(source);
        let [uid, "volumes", plugin_dir, name, ..] = parts.as_slice() else {
            return Ok(None);
        };
        self.check_uid(uid, refuse)?;
        let Some(plugin) = plugin_dir.strip_prefix("kubernetes.io~") else {
            return Err(MountError::UnsupportedVolume {
                destination: destination.to_owned(),
                plugin: (*plugin_dir).to_owned(),
            });
        };
        if !matches!(
            plugin,
            "secret" | "projected" | "configmap" | "downward-api" | "empty-dir"
        ) {
            return Err(MountError::UnsupportedVolume {
                destination: destination.to_owned(),
                plugin: plugin.to_owned(),
            });
        }
        let volume: PathBuf = ["pods", uid, "volumes", plugin_dir, name].iter().collect();
        let source = self.resolve(destination, source, &self.kubelet_root, &volume, false)?;
        Ok(Some(match plugin {
            "secret" | "projected" => MountKind::Secret { source },
            "configmap" | "downward-api" => MountKind::ConfigMap { source },
            _ => MountKind::EmptyDir {
                name: (*name).to_owned(),
            },
        }))
    }

    /// kubelet's per-pod files: `<root>/pods/<uid>/etc-hosts` and the termination log
    /// `<root>/pods/<uid>/containers/<name>/<id>`; their path under the root.
    fn kubelet_file(
        &self,
        source: &Path,
        refuse: &dyn Fn(String) -> MountError,
    ) -> Result<Option<PathBuf>, MountError> {
        let Ok(rest) = source.strip_prefix(self.kubelet_root.join("pods")) else {
            return Ok(None);
        };
        let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
        let uid = match parts.as_slice() {
            [uid, "etc-hosts"] | [uid, "containers", _, _] => *uid,
            _ => return Ok(None),
        };
        self.check_uid(uid, refuse)?;
        Ok(Some(Path::new("pods").join(rest)))
    }

    /// containerd's `<dir>/io.containerd.grpc.v1.cri/sandboxes/<id>/{hosts,hostname,resolv.conf}`
    /// of this sandbox: the containerd dir and the path under it.
    fn runtime_file(
        &self,
        source: &Path,
        refuse: &dyn Fn(String) -> MountError,
    ) -> Result<Option<(&Path, PathBuf)>, MountError> {
        let parts: Vec<&str> = source.iter().filter_map(|c| c.to_str()).collect();
        let [.., "io.containerd.grpc.v1.cri", "sandboxes", id, file] = parts.as_slice() else {
            return Ok(None);
        };
        if !RUNTIME_FILES.contains(file) {
            return Ok(None);
        }
        let Some(dir) = self
            .containerd_dirs
            .iter()
            .find(|d| source.parent().and_then(Path::parent) == Some(&d.join(CRI_SANDBOXES)))
        else {
            return Err(refuse(format!(
                "; it is not under containerd's dirs ({})",
                self.containerd_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        match &self.sandbox_id {
            Some(mine) if mine == id => {}
            Some(mine) => {
                return Err(refuse(format!(
                    "; it belongs to sandbox {id}, not to this pod's ({mine})"
                )))
            }
            None => {
                return Err(refuse(format!(
                    "; it belongs to sandbox {id} and this pod's sandbox is unknown (no \
                     {ANN_SANDBOX_ID} annotation)"
                )))
            }
        }
        Ok(Some((dir, Path::new(CRI_SANDBOXES).join(id).join(file))))
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    pub(crate) const UID: &str = "0d3f6a1c-1111-2222-3333-444455556666";
    const OTHER: &str = "9e9e9e9e-7777-8888-9999-000011112222";
    pub(crate) const SID: &str = "abc123";
    const OTHER_SID: &str = "def456";
    const VOLUMES: &[&str] = &[
        "kubernetes.io~secret/db-pass",
        "kubernetes.io~projected/kube-api-access-x7k2p",
        "kubernetes.io~configmap/app-config",
        "kubernetes.io~downward-api/podinfo",
        "kubernetes.io~empty-dir/cache",
    ];

    /// A kubelet root and a containerd root on disk, with two pods (this one and another) and
    /// two sandboxes in them.
    pub(crate) struct Host {
        pub dir: PathBuf,
    }

    impl Host {
        pub fn new(tag: &str) -> Host {
            let dir =
                std::env::temp_dir().join(format!("vpod-mounts-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for uid in [UID, OTHER] {
                let pod = dir.join("kubelet/pods").join(uid);
                for v in VOLUMES {
                    std::fs::create_dir_all(pod.join("volumes").join(v)).unwrap();
                }
                std::fs::write(pod.join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
                std::fs::create_dir_all(pod.join("containers/app")).unwrap();
                std::fs::write(pod.join("containers/app/5f2a9c1e"), "").unwrap();
            }
            for sid in [SID, OTHER_SID] {
                let sb = dir.join("containerd").join(CRI_SANDBOXES).join(sid);
                std::fs::create_dir_all(&sb).unwrap();
                for f in RUNTIME_FILES {
                    std::fs::write(sb.join(f), sid).unwrap();
                }
            }
            Host { dir }
        }
        pub fn kubelet(&self) -> PathBuf {
            self.dir.join("kubelet")
        }
        pub fn pod(&self, uid: &str) -> String {
            self.kubelet().join("pods").join(uid).display().to_string()
        }
        pub fn sandbox(&self, sid: &str) -> String {
            let sb = self.dir.join("containerd").join(CRI_SANDBOXES).join(sid);
            sb.display().to_string()
        }
        /// The classifier of pod UID, sandbox SID.
        pub fn classifier(&self) -> MountClassifier {
            MountClassifier::new(self.kubelet())
                .with_containerd_dirs([self.dir.join("containerd")])
                .for_pod(Some(UID), Some(SID))
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// `vpod run --secret/--configmap`: the dirs the caller names are volumes, exactly those.
    #[test]
    fn dirs_the_caller_names_are_volumes_and_nothing_else_is() {
        let c = MountClassifier::default()
            .with_secret_dir("/srv/tok")
            .with_config_dir("/srv/cfg");
        assert_eq!(
            c.classify(&bind("/srv/tok", "/run/secrets/tok")).unwrap(),
            MountKind::Secret {
                source: "/srv/tok".into()
            }
        );
        assert_eq!(
            c.classify(&bind("/srv/cfg", "/etc/config/cfg")).unwrap(),
            MountKind::ConfigMap {
                source: "/srv/cfg".into()
            }
        );
        for other in ["/srv/tok/sub", "/srv", "/srv/other"] {
            assert!(
                matches!(
                    c.classify(&bind(other, "/x")),
                    Err(MountError::HostPath { .. })
                ),
                "{other}"
            );
        }
    }

    #[test]
    fn kubelet_volumes_are_classified_by_plugin() {
        let h = Host::new("plugin");
        let c = h.classifier();
        let pod = h.pod(UID);
        let secret = format!("{pod}/volumes/kubernetes.io~secret/db-pass");
        assert_eq!(
            c.classify(&bind(&secret, "/etc/db")).unwrap(),
            MountKind::Secret {
                source: secret.clone().into()
            }
        );
        let token = format!("{pod}/volumes/kubernetes.io~projected/kube-api-access-x7k2p");
        assert!(matches!(
            c.classify(&bind(
                &token,
                "/var/run/secrets/kubernetes.io/serviceaccount"
            )),
            Ok(MountKind::Secret { .. })
        ));
        let cm = format!("{pod}/volumes/kubernetes.io~configmap/app-config");
        assert!(matches!(
            c.classify(&bind(&cm, "/etc/app")),
            Ok(MountKind::ConfigMap { .. })
        ));
        let dapi = format!("{pod}/volumes/kubernetes.io~downward-api/podinfo");
        assert!(matches!(
            c.classify(&bind(&dapi, "/etc/podinfo")),
            Ok(MountKind::ConfigMap { .. })
        ));
        let empty = format!("{pod}/volumes/kubernetes.io~empty-dir/cache");
        assert_eq!(
            c.classify(&bind(&empty, "/cache")).unwrap(),
            MountKind::EmptyDir {
                name: "cache".into()
            }
        );
    }

    /// A subPath mount (here a hard link: the same inode, as kubelet's bind mount has) maps back
    /// to its volume and the key's visible name; another pod's, or a file of no volume, is refused.
    #[test]
    fn subpath_mounts_map_back_to_their_volume() {
        let h = Host::new("subpath");
        let c = h.classifier();
        let pod = h.pod(UID);
        let cm = format!("{pod}/volumes/kubernetes.io~configmap/app-config");
        let ts = format!("{cm}/..2026_12_02_10_00_00.1");
        std::fs::create_dir_all(&ts).unwrap();
        std::fs::write(format!("{ts}/greeting"), "hi").unwrap();
        std::os::unix::fs::symlink("..2026_12_02_10_00_00.1", format!("{cm}/..data")).unwrap();
        std::os::unix::fs::symlink("..data/greeting", format!("{cm}/greeting")).unwrap();
        let sub = format!("{pod}/volume-subpaths/app-config/app");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::hard_link(format!("{ts}/greeting"), format!("{sub}/0")).unwrap();
        assert_eq!(
            c.classify(&bind(&format!("{sub}/0"), "/etc/greeting"))
                .unwrap(),
            MountKind::SubPath {
                volume: Box::new(MountKind::ConfigMap {
                    source: cm.clone().into()
                }),
                sub_path: "greeting".into(),
            }
        );
        std::fs::write(format!("{sub}/1"), "not in the volume").unwrap();
        let e = c
            .classify(&bind(&format!("{sub}/1"), "/etc/x"))
            .unwrap_err();
        assert!(e.to_string().contains("app-config"), "{e}");
        let other = format!("{}/volume-subpaths/app-config/app/0", h.pod(OTHER));
        assert!(matches!(
            c.classify(&bind(&other, "/etc/x")),
            Err(MountError::HostPath { .. })
        ));
    }

    #[test]
    fn runtime_files_pass_and_the_shm_mount_stays_in_the_guest() {
        let h = Host::new("runtime");
        let c = h.classifier();
        let (pod, sb) = (h.pod(UID), h.sandbox(SID));
        for src in [
            format!("{pod}/etc-hosts"),
            format!("{pod}/containers/app/5f2a9c1e"),
            format!("{sb}/resolv.conf"),
            format!("{sb}/hostname"),
            format!("{sb}/hosts"),
        ] {
            let log = src.contains("/containers/");
            assert!(
                matches!(
                    c.classify(&bind(&src, "/etc/x")),
                    Ok(MountKind::RuntimeFile { termination_log, .. }) if termination_log == log
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
        let h = Host::new("hostpath");
        let c = h.classifier();
        let k = h.kubelet().display().to_string();
        for src in [
            "/etc".to_string(),
            k.clone(),
            format!("{k}/pods/x/volumes"),
            format!("{}/secret-key", h.sandbox(SID)),
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/shm".into(),
        ] {
            let e = c.classify(&bind(&src, "/data")).unwrap_err();
            assert!(matches!(e, MountError::HostPath { .. }), "{src}: {e:?}");
            assert!(e.to_string().contains("hostPath"), "{e}");
        }
        // `..` can't climb out of a kubelet volume dir into the host.
        let sneaky = format!(
            "{}/volumes/kubernetes.io~secret/../../../../../etc",
            h.pod(UID)
        );
        assert!(matches!(
            c.classify(&bind(&sneaky, "/x")),
            Err(MountError::Invalid { .. })
        ));
    }

    /// Issue 12 item 5: a hostPath volume naming another pod's kubelet dirs, another sandbox's
    /// runtime files or another pod's termination log is a hostPath, whatever it looks like.
    #[test]
    fn another_pods_volumes_and_files_are_refused_as_host_paths() {
        let h = Host::new("other");
        let c = h.classifier();
        let other = h.pod(OTHER);
        let mut srcs: Vec<String> = VOLUMES
            .iter()
            .map(|v| format!("{other}/volumes/{v}"))
            .collect();
        srcs.push(format!("{other}/etc-hosts"));
        srcs.push(format!("{other}/containers/app/5f2a9c1e"));
        for f in RUNTIME_FILES {
            srcs.push(format!("{}/{f}", h.sandbox(OTHER_SID)));
        }
        for src in &srcs {
            let e = c.classify(&bind(src, "/etc/stolen")).unwrap_err();
            assert!(matches!(e, MountError::HostPath { .. }), "{src}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains("spec.volumes[].hostPath"), "{msg}");
            assert!(msg.contains(src.as_str()), "{msg}");
        }
        // A pod whose UID and sandbox are unknown (no annotations) reads nothing of kubelet's.
        let blind =
            MountClassifier::new(h.kubelet()).with_containerd_dirs([h.dir.join("containerd")]);
        let mine = format!("{}/volumes/kubernetes.io~secret/db-pass", h.pod(UID));
        let e = blind.classify(&bind(&mine, "/s")).unwrap_err();
        assert!(e.to_string().contains(ANN_SANDBOX_UID), "{e}");
        let e = blind
            .classify(&bind(&format!("{}/hosts", h.sandbox(SID)), "/etc/hosts"))
            .unwrap_err();
        assert!(e.to_string().contains(ANN_SANDBOX_ID), "{e}");
        // Runtime files only count under containerd's own dirs.
        let fake = h
            .dir
            .join("tmp/io.containerd.grpc.v1.cri/sandboxes")
            .join(SID);
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(fake.join("hosts"), "").unwrap();
        let e = c
            .classify(&bind(
                &fake.join("hosts").display().to_string(),
                "/etc/hosts",
            ))
            .unwrap_err();
        assert!(matches!(e, MountError::HostPath { .. }), "{e:?}");
    }

    /// The path is resolved: `//`, `.` and symlinks inside the kubelet dir lead nowhere else.
    #[test]
    fn sources_are_resolved_before_they_are_trusted() {
        let h = Host::new("resolve");
        let c = h.classifier();
        let pod = h.pod(UID);
        let dotted = format!("{pod}/./volumes//kubernetes.io~secret/db-pass/");
        assert!(matches!(
            c.classify(&bind(&dotted, "/s")),
            Ok(MountKind::Secret { .. })
        ));
        // This pod's "secret" is a symlink to the other pod's secret, or to /etc.
        let vols = Path::new(&pod).join("volumes/kubernetes.io~secret");
        let other = Path::new(&h.pod(OTHER)).join("volumes/kubernetes.io~secret/db-pass");
        std::os::unix::fs::symlink(&other, vols.join("stolen")).unwrap();
        std::os::unix::fs::symlink("/etc", vols.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", Path::new(&pod).join("containers/app/x"))
            .unwrap();
        for src in [
            vols.join("stolen"),
            vols.join("etc"),
            vols.join("db-pass/../etc"),
            Path::new(&pod).join("containers/app/x"),
        ] {
            let src = src.display().to_string();
            let e = c.classify(&bind(&src, "/s")).unwrap_err();
            assert!(
                matches!(e, MountError::HostPath { .. } | MountError::Invalid { .. }),
                "{src}: {e:?}"
            );
        }
        // A symlinked kubelet root (on another disk) is fine: only what is below it counts.
        let link = h.dir.join("kubelet-link");
        std::os::unix::fs::symlink(h.kubelet(), &link).unwrap();
        let c = MountClassifier::new(&link).for_pod(Some(UID), Some(SID));
        let s = link
            .join("pods")
            .join(UID)
            .join("volumes/kubernetes.io~secret/db-pass");
        assert!(matches!(
            c.classify(&bind(&s.display().to_string(), "/s")),
            Ok(MountKind::Secret { .. })
        ));
    }

    #[test]
    fn the_pod_identity_comes_from_containerds_annotations() {
        let h = Host::new("ann");
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{"{ANN_SANDBOX_UID}":"{UID}",
                 "{ANN_SANDBOX_ID}":"{SID}"}}}}"#
        ))
        .unwrap();
        let c = MountClassifier::new(h.kubelet())
            .with_containerd_dirs([h.dir.join("containerd")])
            .for_spec(&spec);
        let mine = format!("{}/volumes/kubernetes.io~secret/db-pass", h.pod(UID));
        assert!(matches!(
            c.classify(&bind(&mine, "/s")),
            Ok(MountKind::Secret { .. })
        ));
        let hosts = format!("{}/hosts", h.sandbox(SID));
        assert!(matches!(
            c.classify(&bind(&hosts, "/etc/hosts")),
            Ok(MountKind::RuntimeFile { .. })
        ));
        // A UID that is not one path component names no pod.
        let c = MountClassifier::new(h.kubelet()).for_pod(Some(".."), Some("a/b"));
        assert!(c.classify(&bind(&mine, "/s")).is_err());
    }

    #[test]
    fn other_volume_plugins_are_refused_by_name() {
        let h = Host::new("plugins");
        let c = h.classifier();
        let pod = h.pod(UID);
        let e = c
            .classify(&bind(
                &format!("{pod}/volumes/kubernetes.io~nfs/share"),
                "/mnt",
            ))
            .unwrap_err();
        assert!(e.to_string().contains("nfs"), "{e}");
        let e = c
            .classify(&bind(
                &format!("{pod}/volumes/kubernetes.io~csi/pvc-1"),
                "/mnt",
            ))
            .unwrap_err();
        assert!(matches!(e, MountError::UnsupportedVolume { .. }));
    }

    #[test]
    fn a_custom_kubelet_root_is_honoured() {
        let h = Host::new("root");
        let c = h.classifier();
        let s = format!("{}/volumes/kubernetes.io~secret/db-pass", h.pod(UID));
        assert!(matches!(
            c.classify(&bind(&s, "/s")),
            Ok(MountKind::Secret { .. })
        ));
        let s = format!("{DEFAULT_KUBELET_ROOT}/pods/{UID}/volumes/kubernetes.io~secret/s");
        assert!(matches!(
            c.classify(&bind(&s, "/s")),
            Err(MountError::HostPath { .. })
        ));
    }
}
