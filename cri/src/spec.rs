//! CRI's configs as OCI runtime specs, what containerd's CRI plugin makes of them for its
//! shims. The specs then go through `vpod_sandbox`'s policy and translation, as the shim's and
//! `vpod run`'s do: one policy, one translation into the agent's request.
//!
//! - [`sandbox`]: the pod's spec (its namespaces, hostname, sysctls), checked at
//!   RunPodSandbox so a host namespace is refused before any VM boots;
//! - [`container`]: a container's (process from the image's config and the CRI one, security
//!   context, resources, mounts from kubelet's volume dirs).

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::{
    security_profile::ProfileType, ContainerConfig, LinuxContainerSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, SecurityProfile,
};
use oci_spec::runtime::{Mount, MountBuilder, Spec};
use serde_json::{json, Value};
use vpod_images::oci::RuntimeConfig;
use vpod_sandbox::defaults;

use crate::error::{CriError, Result};

/// The namespaces a spec asks for: the pod's own unless a namespace option says NODE (which
/// the policy then refuses, naming the field).
fn namespaces(opts: Option<&NamespaceOption>, shared_pid: Option<&str>) -> Vec<Value> {
    let mode = |m: i32| NamespaceMode::try_from(m).unwrap_or(NamespaceMode::Pod);
    let (net, pid, ipc) = opts.map_or(
        (
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ),
        |o| (mode(o.network), mode(o.pid), mode(o.ipc)),
    );
    let mut v = vec![json!({"type": "uts"}), json!({"type": "mount"})];
    if net != NamespaceMode::Node {
        v.push(json!({"type": "network"}));
    }
    if ipc != NamespaceMode::Node {
        v.push(json!({"type": "ipc"}));
    }
    match (pid, shared_pid) {
        (NamespaceMode::Node, _) => {}
        (NamespaceMode::Pod, Some(path)) => v.push(json!({"type": "pid", "path": path})),
        _ => v.push(json!({"type": "pid"})),
    }
    v
}

/// The pod's spec: what RunPodSandbox checks (host namespaces, sysctls) before booting.
pub fn sandbox(config: &PodSandboxConfig) -> Result<Spec> {
    let linux = config.linux.as_ref();
    let opts = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let sysctls: HashMap<String, String> = linux.map(|l| l.sysctls.clone()).unwrap_or_default();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": config.hostname,
        "linux": {"namespaces": namespaces(opts, None), "sysctl": sysctls},
    });
    serde_json::from_value(spec).map_err(|e| CriError::Invalid(format!("the pod's spec: {e}")))
}

/// What a container's spec is made from besides its CRI config.
#[derive(Debug)]
pub struct ContainerInputs<'a> {
    /// The pod's config (namespaces, hostname).
    pub pod: &'a PodSandboxConfig,
    /// The image's runtime config.
    pub image: &'a RuntimeConfig,
    /// The image's name, for errors.
    pub image_name: &'a str,
    /// `/proc/<pid>/ns/pid` of the pod, for a pod that shares one PID namespace.
    pub shared_pid: Option<&'a str>,
    /// The pod's resolv.conf, made by the server (a runtime file the classifier knows).
    pub resolv_conf: Option<&'a Path>,
    /// Where Localhost seccomp profiles may be read: kubelet's `<root>/seccomp`.
    pub seccomp_root: &'a Path,
}

/// A container's spec.
pub fn container(config: &ContainerConfig, inp: &ContainerInputs<'_>) -> Result<Spec> {
    let linux = config.linux.as_ref();
    let sc = linux
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let process = process(config, &sc, inp)?;
    let res = linux.and_then(|l| l.resources.as_ref());
    let memory = res
        .filter(|r| r.memory_limit_in_bytes > 0)
        .map(|r| json!({"limit": r.memory_limit_in_bytes}));
    let cpu = res.map(|r| {
        let mut c = serde_json::Map::new();
        if r.cpu_quota > 0 {
            c.insert("quota".into(), json!(r.cpu_quota));
        }
        if r.cpu_period > 0 {
            c.insert("period".into(), json!(r.cpu_period));
        }
        if r.cpu_shares > 0 {
            c.insert("shares".into(), json!(r.cpu_shares));
        }
        Value::Object(c)
    });
    let pod_opts = inp
        .pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let opts = sc.namespace_options.as_ref().or(pod_opts);
    let masked = if sc.masked_paths.is_empty() && !sc.privileged {
        defaults::MASKED_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        sc.masked_paths.clone()
    };
    let readonly = if sc.readonly_paths.is_empty() && !sc.privileged {
        defaults::READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        sc.readonly_paths.clone()
    };
    let mut linux_v = json!({
        "namespaces": namespaces(opts, inp.shared_pid),
        "resources": {"memory": memory, "cpu": cpu},
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if let Some(s) = seccomp(sc.seccomp.as_ref(), sc.privileged, inp.seccomp_root)? {
        linux_v["seccomp"] = s;
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "hostname": inp.pod.hostname,
        "linux": linux_v,
        "annotations": config.annotations,
    });
    let mut spec: Spec = serde_json::from_value(spec)
        .map_err(|e| CriError::Invalid(format!("container's spec: {e}")))?;
    spec.set_mounts(Some(mounts(config, inp.resolv_conf)?));
    Ok(spec)
}

/// The spec's process: Kubernetes' rules for command and args over the image's entrypoint and
/// cmd, the image's env under the config's, the user and capabilities of the security context.
fn process(
    config: &ContainerConfig,
    sc: &LinuxContainerSecurityContext,
    inp: &ContainerInputs<'_>,
) -> Result<Value> {
    let image = inp.image;
    // A command replaces the entrypoint and drops the image's cmd; args alone replace the cmd.
    let mut argv: Vec<String> = if config.command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        argv.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        argv.extend(image.cmd.clone().unwrap_or_default());
    }
    if argv.is_empty() {
        return Err(CriError::Invalid(format!(
            "container {:?}: image {} has no entrypoint or cmd and the container gives no \
             command (containers[].command)",
            name(config),
            inp.image_name
        )));
    }
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", defaults::PATH));
    }
    if !inp.pod.hostname.is_empty() {
        env.push(format!("HOSTNAME={}", inp.pod.hostname));
    }
    if config.tty {
        env.push("TERM=xterm".into());
    }
    for kv in &config.envs {
        env.retain(|e| e.split('=').next() != Some(kv.key.as_str()));
        env.push(format!("{}={}", kv.key, kv.value));
    }
    let (uid, gid) = user(config, sc, image)?;
    let cwd = Some(config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .or(image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let caps = capabilities(sc);
    let apparmor = sc.apparmor.as_ref().and_then(|p| match p.profile_type() {
        ProfileType::Localhost => Some(format!("localhost/{}", p.localhost_ref)),
        ProfileType::Unconfined => Some("unconfined".into()),
        ProfileType::RuntimeDefault => None,
    });
    let groups: Vec<i64> = sc.supplemental_groups.clone();
    Ok(json!({
        "terminal": config.tty,
        "user": {"uid": uid, "gid": gid, "additionalGids": groups},
        "args": argv,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.no_new_privs,
        "apparmorProfile": apparmor,
        "oomScoreAdj": config.linux.as_ref().and_then(|l| l.resources.as_ref()).map(|r| r.oom_score_adj),
    }))
}

fn name(config: &ContainerConfig) -> &str {
    config.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// runAsUser / runAsGroup, else the image's numeric user (a name would need the image's
/// /etc/passwd, which lives on its disk in the guest).
fn user(
    config: &ContainerConfig,
    sc: &LinuxContainerSecurityContext,
    image: &RuntimeConfig,
) -> Result<(u32, u32)> {
    let id = |v: i64, field: &str| {
        u32::try_from(v).map_err(|_| {
            CriError::Invalid(format!(
                "container {:?}: securityContext.{field} {v} is not a valid id",
                name(config)
            ))
        })
    };
    let (mut uid, mut gid) = (0, 0);
    let image_user = image.user.clone().unwrap_or_default();
    if !image_user.is_empty() {
        let (u, g) = image_user.split_once(':').unwrap_or((&image_user, ""));
        match u.parse::<u32>() {
            Ok(n) => uid = n,
            Err(_) if sc.run_as_user.is_some() => {}
            Err(_) => {
                return Err(CriError::Invalid(format!(
                    "container {:?}: the image's user {image_user:?} is a name; vpod needs a \
                     numeric one (set securityContext.runAsUser)",
                    name(config)
                )))
            }
        }
        gid = g.parse().unwrap_or(0);
    }
    if let Some(u) = &sc.run_as_user {
        uid = id(u.value, "runAsUser")?;
    }
    if let Some(g) = &sc.run_as_group {
        gid = id(g.value, "runAsGroup")?;
    }
    if !sc.run_as_username.is_empty() && sc.run_as_user.is_none() {
        return Err(CriError::Invalid(format!(
            "container {:?}: user name {:?}: vpod needs a numeric user (securityContext.runAsUser)",
            name(config),
            sc.run_as_username
        )));
    }
    Ok((uid, gid))
}

/// containerd's default set, with the context's adds and drops (`ALL` included). A privileged
/// container gets every capability from the agent ([`vpod_sandbox::CreateOptions`]).
fn capabilities(sc: &LinuxContainerSecurityContext) -> Vec<String> {
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let mut caps: Vec<String> = defaults::CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(c) = &sc.capabilities {
        if c.drop_capabilities
            .iter()
            .any(|d| d.eq_ignore_ascii_case("ALL"))
        {
            caps.clear();
        }
        let drop: Vec<String> = c.drop_capabilities.iter().map(|d| norm(d)).collect();
        caps.retain(|x| !drop.contains(x));
        if c.add_capabilities
            .iter()
            .any(|a| a.eq_ignore_ascii_case("ALL"))
        {
            caps = defaults::ALL_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        for a in &c.add_capabilities {
            let a = norm(a);
            if a != "CAP_ALL" && !caps.contains(&a) {
                caps.push(a);
            }
        }
    }
    caps
}

/// The spec's seccomp: RuntimeDefault (what kubelet asks when nothing is set, since 1.27's
/// default) is vpod's allow-list; Localhost is the profile file kubelet names, read as given.
fn seccomp(p: Option<&SecurityProfile>, privileged: bool, root: &Path) -> Result<Option<Value>> {
    let Some(p) = p else {
        return Ok((!privileged).then(runtime_default));
    };
    match p.profile_type() {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault if privileged => Ok(None),
        ProfileType::RuntimeDefault => Ok(Some(runtime_default())),
        ProfileType::Localhost => {
            let path = Path::new(&p.localhost_ref);
            let bad = |why: String| {
                CriError::Invalid(format!(
                    "seccomp profile {} (securityContext.seccompProfile.localhostProfile): {why}",
                    path.display()
                ))
            };
            // Only kubelet's profile dir is read: a profile path is a host path.
            let real = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
            let root = std::fs::canonicalize(root)
                .map_err(|e| bad(format!("kubelet's {}: {e}", root.display())))?;
            if !real.starts_with(&root) {
                return Err(bad(format!("it is not under {}", root.display())));
            }
            let text = std::fs::read_to_string(&real).map_err(|e| bad(e.to_string()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                CriError::Invalid(format!(
                    "seccomp profile {} (securityContext.seccompProfile.localhostProfile): {e}",
                    path.display()
                ))
            })?;
            Ok(Some(v))
        }
    }
}

/// vpod's RuntimeDefault allow-list, as a spec's `linux.seccomp`.
fn runtime_default() -> Value {
    serde_json::to_value(vpod_sandbox::seccomp::runtime_default()).unwrap_or(Value::Null)
}

/// kubelet's mounts (its volume dirs) as bind mounts, and the pod's resolv.conf.
fn mounts(config: &ContainerConfig, resolv_conf: Option<&Path>) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    let bind = |src: &Path, dest: &str, ro: bool| {
        let mut opts = vec!["rbind".to_owned()];
        opts.push(if ro { "ro" } else { "rw" }.to_owned());
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(opts)
            .build()
            .map_err(|e| CriError::Invalid(format!("mount {dest}: {e}")))
    };
    let has = |dest: &str| config.mounts.iter().any(|m| m.container_path == dest);
    if let Some(r) = resolv_conf.filter(|_| !has("/etc/resolv.conf")) {
        out.push(bind(r, "/etc/resolv.conf", false)?);
    }
    for m in &config.mounts {
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(CriError::Invalid(format!(
                "mount {}: image volumes (volumes[].image) are not supported by vpod serve",
                m.container_path
            )));
        }
        out.push(bind(
            Path::new(&m.host_path),
            &m.container_path,
            m.readonly,
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
