//! What a pod's OCI specs may ask for: vpod shares nothing with the host, so a spec that joins a
//! host namespace is refused with the Kubernetes field that asked for it.
//!
//! containerd's CRI plugin leaves a namespace out of `linux.namespaces` when the pod shares the
//! host's (`hostNetwork`, `hostPID`, `hostIPC`), for the sandbox and for every container in it.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::mounts::{MountClassifier, MountError, MountKind};

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{field} is refused: a vpod pod runs in its own microVM and shares no {what} with the host \
         (set {field}: false{hint})"
    )]
    HostNamespace {
        field: &'static str,
        what: &'static str,
        hint: &'static str,
    },
    #[error("the OCI spec has no `linux` section: vpod runs Linux containers only")]
    NotLinux,
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// A spec that passed the checks, with each mount classified (in the spec's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSpec {
    pub mounts: Vec<(std::path::PathBuf, MountKind)>,
    /// Host devices the spec listed (privileged containers get all of them from containerd);
    /// none reaches the guest: privileged means privileged inside the pod's VM only.
    pub host_devices_dropped: usize,
}

/// The host namespaces a Kubernetes pod can ask for, in the order they are reported.
const HOST_NAMESPACES: &[(LinuxNamespaceType, &str, &str, &str)] = &[
    (
        LinuxNamespaceType::Network,
        "spec.hostNetwork",
        "network",
        "; reach the pod through a Service, hostPort or NodePort",
    ),
    (LinuxNamespaceType::Pid, "spec.hostPID", "process table", ""),
    (LinuxNamespaceType::Ipc, "spec.hostIPC", "IPC namespace", ""),
];

/// Checks a sandbox's or container's OCI spec and classifies its mounts.
pub fn check_spec(spec: &Spec, mounts: &MountClassifier) -> Result<CheckedSpec, PolicyError> {
    let linux = spec.linux().as_ref().ok_or(PolicyError::NotLinux)?;
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for &(typ, field, what, hint) in HOST_NAMESPACES {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            return Err(PolicyError::HostNamespace { field, what, hint });
        }
    }
    let mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| Ok((m.destination().clone(), mounts.classify(m)?)))
        .collect::<Result<Vec<_>, MountError>>()?;
    Ok(CheckedSpec {
        mounts,
        host_devices_dropped: linux.devices().as_ref().map_or(0, Vec::len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed version of the spec containerd 1.6 hands a runtime for a pod container.
    fn spec(namespaces: &[&str], extra_mounts: &str, devices: &str) -> Spec {
        let ns: Vec<String> = namespaces
            .iter()
            .map(|t| format!(r#"{{"type":"{t}"}}"#))
            .collect();
        let json = format!(
            r#"{{
              "ociVersion": "1.0.2",
              "process": {{"cwd": "/", "args": ["sh"], "user": {{"uid": 0, "gid": 0}}}},
              "root": {{"path": "rootfs"}},
              "mounts": [
                {{"destination": "/proc", "type": "proc", "source": "proc"}},
                {{"destination": "/dev/shm", "type": "bind",
                  "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm",
                  "options": ["rbind", "ro"]}}
                {extra_mounts}
              ],
              "linux": {{"namespaces": [{}] {devices}}}
            }}"#,
            ns.join(",")
        );
        serde_json::from_str(&json).unwrap()
    }

    const POD_NS: &[&str] = &["pid", "ipc", "uts", "mount", "network"];

    #[test]
    fn a_pod_spec_passes_with_its_mounts_classified() {
        let s = spec(
            POD_NS,
            r#",{"destination": "/etc/secret", "type": "bind",
                 "source": "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/s",
                 "options": ["rbind", "ro"]}"#,
            "",
        );
        let c = check_spec(&s, &MountClassifier::default()).unwrap();
        assert_eq!(c.mounts.len(), 3);
        assert_eq!(c.mounts[1].1, MountKind::Shm);
        assert!(matches!(c.mounts[2].1, MountKind::Secret { .. }));
        assert_eq!(c.host_devices_dropped, 0);
    }

    #[test]
    fn host_namespaces_are_refused_naming_the_field() {
        for (missing, field) in [
            ("network", "spec.hostNetwork"),
            ("pid", "spec.hostPID"),
            ("ipc", "spec.hostIPC"),
        ] {
            let ns: Vec<&str> = POD_NS.iter().copied().filter(|t| *t != missing).collect();
            let e = check_spec(&spec(&ns, "", ""), &MountClassifier::default()).unwrap_err();
            assert!(e.to_string().contains(field), "{missing}: {e}");
        }
    }

    #[test]
    fn host_path_mounts_are_refused_and_devices_are_dropped() {
        let s = spec(
            POD_NS,
            r#",{"destination": "/host", "type": "bind", "source": "/",
                 "options": ["rbind", "rw"]}"#,
            "",
        );
        let e = check_spec(&s, &MountClassifier::default()).unwrap_err();
        assert!(e.to_string().contains("hostPath"), "{e}");
        let s = spec(
            POD_NS,
            "",
            r#","devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]"#,
        );
        let c = check_spec(&s, &MountClassifier::default()).unwrap();
        assert_eq!(c.host_devices_dropped, 1);
    }
}
