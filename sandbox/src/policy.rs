//! What a pod's OCI specs may ask for: vpod shares nothing with the host, so a spec that joins a
//! host namespace is refused with the Kubernetes field that asked for it.
//!
//! containerd's CRI plugin leaves a namespace out of `linux.namespaces` when the pod shares the
//! host's (`hostNetwork`, `hostPID`, `hostIPC`), for the sandbox and for every container in it.
//! A namespace `path` joins an existing namespace: only a CNI netns (for the pod's network) and
//! the pod's own namespaces pass; anything else (`/proc/1/ns/net`) would be the host's.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::mounts::{MountClassifier, MountError, MountKind};

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{field} is refused: a vpod pod runs in its own microVM and shares no {what} with the host \
         (set {field}: false{hint})"
    )]
    /// The spec shares a host namespace (leaves it out of `linux.namespaces`).
    HostNamespace {
        /// The Kubernetes field that asked for it (`spec.hostNetwork`).
        field: &'static str,
        /// What would be shared.
        what: &'static str,
        /// What to do instead ("" or "; ...").
        hint: &'static str,
    },
    /// A namespace path that joins a namespace that is not the pod's own.
    #[error("{field} {path:?} is refused: {why}")]
    NamespacePath {
        /// `linux.namespaces[<type>].path`.
        field: String,
        /// The path.
        path: std::path::PathBuf,
        /// Why it is refused.
        why: String,
    },
    /// The spec is not a Linux container's.
    #[error("the OCI spec has no `linux` section: vpod runs Linux containers only")]
    NotLinux,
    /// A sysctl outside the pod's own namespaces (`linux.sysctl`).
    #[error("{0}")]
    Sysctl(String),
    /// An AppArmor profile the guest can't enforce (it has no LSM): refused, never ignored.
    #[error(
        "AppArmor profile {0:?} (securityContext.appArmorProfile) is refused: a vpod pod's kernel \
         is its microVM's own, with no AppArmor in it; use Unconfined or RuntimeDefault (the \
         microVM is the confinement)"
    )]
    AppArmor(String),
    /// A mount is refused.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// A spec that passed the checks, with each mount classified (in the spec's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSpec {
    /// Each mount's destination and kind.
    pub mounts: Vec<(std::path::PathBuf, MountKind)>,
    /// Host devices the spec listed (privileged containers get all of them from containerd);
    /// none reaches the guest: privileged means privileged inside the pod's VM only.
    pub host_devices_dropped: usize,
}

/// The AppArmor profiles a spec may name: none, unconfined, and containerd's RuntimeDefault
/// (which confines a process on the host's kernel; the microVM is the pod's confinement here).
const APPARMOR_ALLOWED: &[&str] = &["", "unconfined", "cri-containerd.apparmor.d"];

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
    for ns in &namespaces {
        if let Some(path) = ns.path() {
            check_namespace_path(ns.typ(), path, mounts.pod_pid())?;
        }
    }
    if let Some((k, v)) = linux
        .sysctl()
        .iter()
        .flatten()
        .find(|(k, v)| !vpod_agent_api::sysctl::namespaced(k, v))
    {
        return Err(PolicyError::Sysctl(vpod_agent_api::sysctl::refusal(k, v)));
    }
    if let Some(profile) = spec
        .process()
        .as_ref()
        .and_then(|p| p.apparmor_profile().as_deref())
        .filter(|p| !APPARMOR_ALLOWED.contains(p))
    {
        return Err(PolicyError::AppArmor(profile.to_owned()));
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

/// Where a pod's network namespace may come from: the dirs `ip netns` and CNI under containerd
/// (1.6 and later: `/var/run/netns/cni-<uuid>`) bind-mount named netns files in.
pub const NETNS_DIRS: &[&str] = &["/run/netns", "/var/run/netns"];

fn ns_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

/// The name of a namespace type under `/proc/<pid>/ns/`.
fn proc_ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        other => ns_name(other),
    }
}

/// A namespace `path` of a spec. The pod's own namespaces (`/proc/<pod_pid>/ns/{net,ipc,uts,pid}`,
/// what containerd names in each container of a sandbox, whose pid is the shim's) pass: the
/// container joins the pod's VM and they are not used. Otherwise only a network namespace may
/// have a path, a named netns in [`NETNS_DIRS`] (CNI's); any other path would join the host's.
fn check_namespace_path(
    typ: LinuxNamespaceType,
    path: &Path,
    pod_pid: Option<u32>,
) -> Result<(), PolicyError> {
    let refuse = |why: String| PolicyError::NamespacePath {
        field: format!("linux.namespaces[{}].path", ns_name(typ)),
        path: path.to_owned(),
        why,
    };
    let own = matches!(
        typ,
        LinuxNamespaceType::Network
            | LinuxNamespaceType::Ipc
            | LinuxNamespaceType::Uts
            | LinuxNamespaceType::Pid
    );
    if let Some(pid) = pod_pid.filter(|_| own) {
        let mine = format!("/proc/{pid}/ns/{}", proc_ns_file(typ));
        if path == Path::new(&mine) {
            return Ok(());
        }
    }
    if typ != LinuxNamespaceType::Network {
        return Err(refuse(format!(
            "a vpod pod's {} namespace is its microVM's own; it joins no host namespace",
            ns_name(typ)
        )));
    }
    check_netns_path(path).map_err(refuse)
}

/// Whether `path` is a named network namespace in [`NETNS_DIRS`]: absolute, no `..`, directly in
/// one of those dirs (which may be symlinks, `/var/run` is), and not itself a symlink.
pub fn check_netns_path(path: &Path) -> Result<(), String> {
    let outside = || {
        format!(
            "a pod's network namespace must be a named netns in {} (what CNI makes); any other \
             path could be the host's network",
            NETNS_DIRS.join(" or ")
        )
    };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("not an absolute path without `..`; {}", outside()));
    }
    let path: PathBuf = path.components().collect();
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(outside());
    };
    if !NETNS_DIRS.iter().any(|d| dir == Path::new(d)) {
        return Err(outside());
    }
    // The dir as resolved must still be a netns dir (as resolved), and the file a real one.
    if let Ok(real) = std::fs::canonicalize(dir) {
        let known = NETNS_DIRS
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .any(|d| d == real);
        if !known {
            return Err(format!(
                "{} resolves to {}; {}",
                dir.display(),
                real.display(),
                outside()
            ));
        }
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!("it is a symlink; {}", outside()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed version of the spec containerd 1.6 hands a runtime for a pod container.
    fn spec(namespaces: &[&str], extra_mounts: &str, devices: &str) -> Spec {
        let ns: Vec<String> = namespaces
            .iter()
            .map(|t| match t.split_once('=') {
                Some((t, p)) => format!(r#"{{"type":"{t}","path":"{p}"}}"#),
                None => format!(r#"{{"type":"{t}"}}"#),
            })
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
        let h = crate::mounts::tests::Host::new("policy");
        let s = spec(
            POD_NS,
            &format!(
                r#",{{"destination": "/etc/secret", "type": "bind",
                 "source": "{}/volumes/kubernetes.io~secret/db-pass",
                 "options": ["rbind", "ro"]}}"#,
                h.pod(crate::mounts::tests::UID)
            ),
            "",
        );
        let c = check_spec(&s, &h.classifier()).unwrap();
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
    fn non_namespaced_sysctls_and_apparmor_profiles_are_refused_naming_the_field() {
        let with = |sysctl: &str, apparmor: &str| {
            let mut s = spec(POD_NS, "", &format!(r#", "sysctl": {{{sysctl}}}"#));
            let mut p = s.process().clone().unwrap();
            p.set_apparmor_profile((!apparmor.is_empty()).then(|| apparmor.to_owned()));
            s.set_process(Some(p));
            check_spec(&s, &MountClassifier::default())
        };
        with(
            r#""net.core.somaxconn": "1024", "kernel.shm_rmid_forced": "1""#,
            "",
        )
        .unwrap();
        with("", "unconfined").unwrap();
        with("", "cri-containerd.apparmor.d").unwrap();
        let e = with(r#""kernel.panic": "1""#, "").unwrap_err();
        assert!(
            e.to_string().contains("securityContext.sysctls")
                && e.to_string().contains("kernel.panic"),
            "{e}"
        );
        let e = with("", "my-profile").unwrap_err();
        assert!(
            e.to_string().contains("securityContext.appArmorProfile")
                && e.to_string().contains("my-profile"),
            "{e}"
        );
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

    /// Issue 12 item 6: a namespace path that is not a CNI netns is the host's.
    #[test]
    fn namespace_paths_outside_the_netns_dirs_are_refused_naming_the_field() {
        let c = MountClassifier::default();
        for (ns, field) in [
            ("network=/proc/1/ns/net", "linux.namespaces[network].path"),
            (
                "network=/run/netns/../../proc/1/ns/net",
                "linux.namespaces[network].path",
            ),
            (
                "network=/var/run/netns/../netns/x",
                "linux.namespaces[network].path",
            ),
            ("network=/tmp/netns/cni-1", "linux.namespaces[network].path"),
            ("network=/run/netns", "linux.namespaces[network].path"),
            ("network=netns/cni-1", "linux.namespaces[network].path"),
            ("pid=/proc/1/ns/pid", "linux.namespaces[pid].path"),
            ("ipc=/proc/1/ns/ipc", "linux.namespaces[ipc].path"),
            ("uts=/proc/1/ns/uts", "linux.namespaces[uts].path"),
            ("mount=/proc/1/ns/mnt", "linux.namespaces[mount].path"),
            ("user=/proc/1/ns/user", "linux.namespaces[user].path"),
            ("cgroup=/proc/1/ns/cgroup", "linux.namespaces[cgroup].path"),
        ] {
            let (typ, _) = ns.split_once('=').unwrap();
            let mut nss: Vec<&str> = POD_NS.iter().copied().filter(|t| *t != typ).collect();
            nss.push(ns);
            let e = check_spec(&spec(&nss, "", ""), &c).unwrap_err();
            assert!(
                matches!(e, PolicyError::NamespacePath { .. }),
                "{ns}: {e:?}"
            );
            assert!(e.to_string().contains(field), "{ns}: {e}");
        }
    }

    #[test]
    fn cni_netns_paths_and_the_pods_own_namespaces_pass() {
        let c = MountClassifier::default();
        for net in ["/var/run/netns/cni-1234", "/run/netns/cni-1234"] {
            let ns = format!("network={net}");
            let nss = ["pid", "ipc", "uts", "mount", ns.as_str()];
            check_spec(&spec(&nss, "", ""), &c).unwrap();
        }
        // A container of a CRI pod: containerd names the sandbox's namespaces by its pid,
        // which is the shim's; those are the pod's own, any other pid is not.
        let me = std::process::id();
        let own = [
            format!("network=/proc/{me}/ns/net"),
            format!("ipc=/proc/{me}/ns/ipc"),
            format!("uts=/proc/{me}/ns/uts"),
            format!("pid=/proc/{me}/ns/pid"),
        ];
        let mut nss: Vec<&str> = own.iter().map(String::as_str).collect();
        nss.push("mount");
        check_spec(&spec(&nss, "", ""), &c.clone().with_pod_pid(me)).unwrap();
        let e = check_spec(&spec(&nss, "", ""), &c).unwrap_err();
        assert!(matches!(e, PolicyError::NamespacePath { .. }), "{e:?}");
        let e = check_spec(&spec(&nss, "", ""), &c.with_pod_pid(me + 1)).unwrap_err();
        assert!(matches!(e, PolicyError::NamespacePath { .. }), "{e:?}");
    }
}
