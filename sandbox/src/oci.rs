//! A container's OCI runtime spec (as containerd's CRI plugin writes it, or
//! `vpod run` makes it from its flags) turned into what the guest agent needs:
//! the create request, and the host files to push as volumes. This is the one
//! translation into the agent's request. The policy check runs first, so a refused spec
//! (host namespaces, hostPath) never reaches the guest.
//!
//! What is approximated, and why:
//! - seccomp: a spec's `linux.seccomp` (Kubernetes' RuntimeDefault or Localhost profile, as
//!   containerd renders it) is applied in the guest rule by rule; see [`crate::seccomp`] for the
//!   few fields that are not read and the notify action that is refused.
//! - the termination log is pushed in as the file kubelet made; what the container writes
//!   there comes back in its exit status and the front writes it to that host file.
//! - sysctls: a container's `linux.sysctl` and the pod's (the sandbox spec's, through
//!   [`crate::pod::CreateOptions`]) are written in the pod's namespaces in the guest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use vpod_agent_api::pb::{
    CreateContainerRequest, Limits, Mount, MountKind as AgentMountKind, Process, PutVolumeRequest,
    Rlimit, SeccompProfile, VolumeFile, VolumeMedium,
};

use crate::seccomp::SeccompSpecError;

use crate::mounts::{MountClassifier, MountKind};
use crate::policy::{check_spec, PolicyError};
use crate::volumes::HostVolume;

/// Why a spec could not become a create request.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The policy refused the spec.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The spec's seccomp profile can't be applied.
    #[error(transparent)]
    Seccomp(#[from] SeccompSpecError),
    /// The spec has no process, or no args for it.
    #[error("the OCI spec has no process to run")]
    NoProcess,
    /// A runtime file to copy in could not be read.
    #[error("read {path} for mount {destination}: {source}")]
    Read {
        /// The host file.
        path: PathBuf,
        /// The mount's path in the container.
        destination: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What creating one container takes.
#[derive(Debug, Clone, Default)]
pub struct ContainerPlan {
    /// The agent's create request.
    pub request: CreateContainerRequest,
    /// Host dirs pushed as volumes (and re-pushed when they change).
    pub watched: Vec<HostVolume>,
    /// Volumes pushed once (emptyDirs, runtime files).
    pub once: Vec<PutVolumeRequest>,
}

/// A volume name for a host path: stable for the same path, so two
/// containers mounting one kubelet volume share it in the guest.
fn volume_name(prefix: &str, path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let base: String = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{prefix}-{base}-{:016x}", h.finish())
}

fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// Translates `spec` for container `id` whose image is the disk `image_serial`.
pub fn container_plan(
    id: &str,
    spec: &Spec,
    image_serial: &str,
    classifier: &MountClassifier,
) -> Result<ContainerPlan, OciError> {
    let checked = check_spec(spec, classifier)?;
    let process = spec.process().as_ref().ok_or(OciError::NoProcess)?;
    let linux = spec.linux().as_ref();

    let mut plan = ContainerPlan::default();
    let mut mounts = Vec::new();
    let mut termination_message_path = String::new();
    let mut seen = BTreeMap::new();
    for (dest, kind) in &checked.mounts {
        let destination = dest.to_string_lossy().into_owned();
        let ro = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == dest)
            .and_then(|m| m.options().as_ref())
            .is_some_and(|o| o.iter().any(|x| x == "ro"));
        let volume = |name: String| Mount {
            destination: destination.clone(),
            kind: AgentMountKind::Volume as i32,
            source: name,
            read_only: ro,
            ..Default::default()
        };
        // A subPath is its volume's mount, narrowed to the path inside it.
        let (kind, sub_path) = match kind {
            MountKind::SubPath { volume, sub_path } => (&**volume, Some(sub_path)),
            k => (k, None),
        };
        let before = mounts.len();
        match kind {
            MountKind::Secret { source } | MountKind::ConfigMap { source } => {
                let secret = matches!(kind, MountKind::Secret { .. });
                let name = volume_name(if secret { "secret" } else { "config" }, source);
                if seen.insert(name.clone(), ()).is_none() {
                    plan.watched.push(HostVolume {
                        name: name.clone(),
                        dir: source.clone(),
                        medium: if secret {
                            VolumeMedium::Memory
                        } else {
                            VolumeMedium::Disk
                        },
                    });
                }
                mounts.push(volume(name));
            }
            MountKind::EmptyDir { name } => {
                let source = spec
                    .mounts()
                    .iter()
                    .flatten()
                    .find(|m| m.destination() == dest)
                    .and_then(|m| m.source().clone())
                    .unwrap_or_default();
                let vname = volume_name("empty", Path::new(name));
                if seen.insert(vname.clone(), ()).is_none() {
                    plan.once.push(PutVolumeRequest {
                        name: vname.clone(),
                        medium: if is_tmpfs(&source) {
                            VolumeMedium::Memory
                        } else {
                            VolumeMedium::Disk
                        } as i32,
                        files: Vec::new(),
                        size_limit_bytes: 0,
                        empty_dir: true,
                    });
                }
                mounts.push(volume(vname));
            }
            MountKind::RuntimeFile {
                source,
                termination_log,
            } => {
                if *termination_log {
                    termination_message_path = destination.clone();
                }
                let cap = crate::volumes::MAX_VOLUME_BYTES;
                let data =
                    crate::volumes::read_file_capped(source, cap).map_err(|e| OciError::Read {
                        path: source.clone(),
                        destination: destination.clone(),
                        source: e,
                    })?;
                let file = source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "file".into());
                let vname = volume_name("file", source);
                plan.once.push(PutVolumeRequest {
                    name: vname.clone(),
                    medium: VolumeMedium::Disk as i32,
                    files: vec![VolumeFile {
                        path: file.clone(),
                        data,
                        mode: 0o644,
                    }],
                    size_limit_bytes: 0,
                    empty_dir: false,
                });
                let mut m = volume(vname);
                m.sub_path = file;
                mounts.push(m);
            }
            MountKind::Shm | MountKind::SubPath { .. } => {}
            MountKind::Guest { fs_type } => {
                // The guest makes /proc, /sys, /dev and friends itself;
                // only extra tmpfs mounts need asking for.
                let standard = [
                    "/proc",
                    "/dev",
                    "/dev/pts",
                    "/dev/shm",
                    "/dev/mqueue",
                    "/sys",
                    "/sys/fs/cgroup",
                ];
                if fs_type == "tmpfs" && !standard.contains(&destination.as_str()) {
                    mounts.push(Mount {
                        destination: destination.clone(),
                        kind: AgentMountKind::Tmpfs as i32,
                        read_only: ro,
                        ..Default::default()
                    });
                }
            }
        }
        if let (Some(sub), Some(m)) = (
            sub_path,
            mounts.get_mut(before..).and_then(|m| m.first_mut()),
        ) {
            m.sub_path = sub.to_string_lossy().into_owned();
        }
    }

    let user = process.user();
    let caps = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .map(|set| {
            let mut v: Vec<String> = set.iter().map(|c| format!("CAP_{c}")).collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            // `RlimitNofile` -> `RLIMIT_NOFILE`
            kind: format!("{:?}", r.typ())
                .to_uppercase()
                .replacen("RLIMIT", "RLIMIT_", 1),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let seccomp_rules = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(crate::seccomp::from_oci)
        .transpose()?;

    plan.request = CreateContainerRequest {
        id: id.into(),
        image_disk: image_serial.into(),
        process: Some(Process {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().to_string_lossy().into_owned(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            tty: process.terminal().unwrap_or(false),
            stdin: false,
            capabilities: caps,
            rlimits,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            // With rules set the agent reads those only.
            seccomp: SeccompProfile::Unconfined as i32,
            seccomp_rules,
            tty_rows: process
                .console_size()
                .as_ref()
                .map_or(0, |b| b.height() as u32),
            tty_cols: process
                .console_size()
                .as_ref()
                .map_or(0, |b| b.width() as u32),
            oom_score_adj: process.oom_score_adj(),
        }),
        hostname: spec.hostname().clone().unwrap_or_default(),
        mounts,
        limits: Some(limits(linux.and_then(|l| l.resources().as_ref()))),
        read_only_rootfs: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
        shm_size_bytes: 0,
        privileged: false,
        // A PID namespace by path is the pod's own (the policy let nothing else through):
        // CRI's NamespaceMode POD, `shareProcessNamespace: true`.
        share_pid_namespace: linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .any(|ns| {
                ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && ns.path().is_some()
            }),
        sysctls: linux
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        termination_message_path,
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(OciError::NoProcess);
    }
    Ok(plan)
}

/// The guest cgroup limits of OCI `resources` (a container's, or an update's).
pub fn limits(resources: Option<&oci_spec::runtime::LinuxResources>) -> Limits {
    let memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .unwrap_or(0) as u64;
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0).unwrap_or(0) as u64;
    let period = cpu.and_then(|c| c.period()).unwrap_or(100_000);
    // cgroup v1 shares (2..262144) to v2 weight (1..10000), as runc maps it.
    let weight = cpu
        .and_then(|c| c.shares())
        .filter(|s| *s >= 2)
        .map(|s| (1 + ((s.min(262_144) - 2) * 9999) / 262_142) as u32)
        .unwrap_or(0);
    let pids = resources
        .and_then(|r| r.pids().as_ref())
        .map(|p| p.limit())
        .filter(|l| *l > 0)
        .unwrap_or(0) as u64;
    Limits {
        memory_bytes: memory,
        cpu_quota_us: quota,
        cpu_period_us: period,
        cpu_weight: weight,
        pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec_json(mounts: &str, namespaces: &str) -> Spec {
        let json = format!(
            r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "user": {{"uid": 1000, "gid": 1000, "additionalGids": [5]}},
    "args": ["sh", "-c", "cat /etc/secret/token"],
    "env": ["PATH=/bin", "A=b"],
    "cwd": "/work",
    "capabilities": {{"bounding": ["CAP_CHOWN", "CAP_KILL"]}},
    "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}}],
    "noNewPrivileges": true
  }},
  "root": {{"path": "rootfs", "readonly": true}},
  "hostname": "web-0",
  "mounts": [{mounts}],
  "linux": {{
    "resources": {{"memory": {{"limit": 67108864}}, "cpu": {{"quota": 50000, "period": 100000, "shares": 512}}, "pids": {{"limit": 100}}}},
    "namespaces": [{namespaces}],
    "maskedPaths": ["/proc/kcore"],
    "readonlyPaths": ["/proc/sys"],
    "seccomp": {{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                 "syscalls": [{{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}}]}}
  }}
}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    const NS: &str = r#"{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1"}"#;

    #[test]
    fn translates_a_kubelet_container_spec() {
        let root = std::env::temp_dir().join(format!("vpod-oci-{}", std::process::id()));
        let secret = root.join("pods/uid1/volumes/kubernetes.io~secret/tok");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::create_dir_all(root.join("pods/uid1/volumes/kubernetes.io~empty-dir/cache"))
            .unwrap();
        let mounts = format!(
            r#"{{"destination":"/proc","type":"proc","source":"proc"}},
               {{"destination":"/etc/secret","type":"bind","source":"{}","options":["rbind","ro"]}},
               {{"destination":"/cache","type":"bind","source":"{}/pods/uid1/volumes/kubernetes.io~empty-dir/cache","options":["rbind","rw"]}}"#,
            secret.display(),
            root.display()
        );
        let spec = spec_json(&mounts, NS);
        let plan = container_plan(
            "c1",
            &spec,
            "img0",
            &MountClassifier::new(&root).for_pod(Some("uid1"), None),
        )
        .unwrap();
        let r = &plan.request;
        let p = r.process.as_ref().unwrap();
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.clone()),
            (1000, 1000, vec![5])
        );
        assert_eq!(p.capabilities, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        assert!(p.no_new_privileges);
        let rules = p.seccomp_rules.as_ref().expect("the spec's seccomp rules");
        assert_eq!(rules.default_errno, Some(1));
        assert_eq!(rules.syscalls[0].names, ["read", "write"]);
        assert_eq!(p.cwd, "/work");
        let l = r.limits.unwrap();
        assert_eq!(
            (l.memory_bytes, l.cpu_quota_us, l.pids),
            (64 << 20, 50_000, 100)
        );
        assert!(l.cpu_weight > 0 && l.cpu_weight < 100, "{}", l.cpu_weight);
        assert!(r.read_only_rootfs);
        assert_eq!(r.hostname, "web-0");
        assert_eq!(r.mounts.len(), 2, "{:?}", r.mounts);
        assert_eq!(r.mounts[0].destination, "/etc/secret");
        assert!(r.mounts[0].read_only);
        assert_eq!(plan.watched.len(), 1);
        assert_eq!(plan.watched[0].medium, VolumeMedium::Memory);
        assert_eq!(plan.once.len(), 1);
        assert!(plan.once[0].empty_dir);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_host_paths_and_host_namespaces_by_field() {
        let hp =
            r#"{"destination":"/data","type":"bind","source":"/srv/data","options":["rbind"]}"#;
        let e =
            container_plan("c", &spec_json(hp, NS), "i", &MountClassifier::default()).unwrap_err();
        assert!(e.to_string().contains("spec.volumes[].hostPath"), "{e}");
        let no_net = r#"{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}"#;
        let e = container_plan(
            "c",
            &spec_json("", no_net),
            "i",
            &MountClassifier::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.hostNetwork"), "{e}");
    }
}
