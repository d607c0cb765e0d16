//! `vpod run`'s flags and the image's config as the container's OCI runtime spec, what
//! containerd's CRI plugin makes of a pod spec and an image for the shim. The spec then goes
//! through `vpod_sandbox::oci` (policy, translation into the agent's request), as the shim's
//! specs do: there is one translation.
//!
//! What the flags decide: the process (the image's entrypoint and command, or the command
//! given; its env with `-e` on top; user, workdir, TTY), containerd's default capabilities,
//! masked and read-only paths and seccomp, the memory and CPU limits, a read-only rootfs, and
//! `--secret`/`--configmap` dirs as read-only bind mounts of volumes the classifier is told of.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};
use serde_json::{json, Value};
use vpod_images::oci::RuntimeConfig;
use vpod_sandbox::{defaults, CreateOptions, MountClassifier};

use crate::args::RunArgs;

/// The one container of a `vpod run` pod.
pub const CONTAINER_ID: &str = "app";
/// Serial of its image's disk.
pub const IMAGE_SERIAL: &str = "img0";

/// The container of a `vpod run` pod, before the pod boots.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its OCI runtime spec.
    pub spec: Spec,
    /// What the spec's bind mounts may be: the `--secret` and `--configmap` dirs.
    pub classifier: MountClassifier,
    /// What the spec can't say: `-i`, `--privileged`.
    pub opts: CreateOptions,
}

/// The limits the flags set (parsed and checked already).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--cpus`, CPUs.
    pub cpus: Option<f64>,
}

/// The CFS period the CPU limit is expressed in (the kernel's default), microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The container pod `id` runs: from `args`, the image's runtime config `image` and a TTY of
/// `tty_size` (rows, cols) when `-t`.
pub fn container(
    args: &RunArgs,
    image: &RuntimeConfig,
    id: &str,
    limits: Limits,
    tty_size: (u32, u32),
) -> Result<Container, String> {
    let process = process(args, image, id, tty_size)?;
    let (mounts, classifier) = volumes(args)?;
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": args.read_only},
        "hostname": id,
        "linux": linux(limits),
    });
    let mut spec: Spec =
        serde_json::from_value(spec).map_err(|e| format!("the container's spec: {e}"))?;
    // Built apart: a host path need not be UTF-8.
    spec.set_mounts(Some(mounts));
    Ok(Container {
        spec,
        classifier,
        opts: CreateOptions {
            stdin: args.interactive,
            privileged: args.privileged,
            ..Default::default()
        },
    })
}

/// The spec's `process`.
fn process(
    args: &RunArgs,
    image: &RuntimeConfig,
    id: &str,
    tty_size: (u32, u32),
) -> Result<Value, String> {
    let mut argv: Vec<String> = image.entrypoint.clone().unwrap_or_default();
    if args.command.is_empty() {
        argv.extend(image.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(args.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(format!(
            "image {} has no entrypoint or command: give one after the image",
            args.image
        ));
    }
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", defaults::PATH));
    }
    env.push(format!("HOSTNAME={id}"));
    if args.tty {
        env.push("TERM=xterm".into());
    }
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let user = args.user.clone().or(image.user.clone()).unwrap_or_default();
    let (uid, gid) = if user.is_empty() {
        (0, 0)
    } else {
        parse_user(&user).ok_or_else(|| {
            format!("user {user:?}: only numeric UID[:GID] is supported (use --user)")
        })?
    };
    let cwd = args
        .workdir
        .clone()
        .or(image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let caps = defaults::CAPABILITIES;
    let (rows, cols) = tty_size;
    Ok(json!({
        "terminal": args.tty,
        "consoleSize": args.tty.then(|| json!({"height": rows, "width": cols})),
        "user": {"uid": uid, "gid": gid},
        "args": argv,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": false,
    }))
}

/// The spec's `linux`: the pod's own namespaces (none of the host's), the limits, and what
/// containerd confines every unprivileged container with.
fn linux(limits: Limits) -> Value {
    let memory = limits.memory.map(|m| json!({"limit": m}));
    let cpu = limits.cpus.map(|c| {
        json!({
            "quota": (c * CPU_PERIOD_US as f64).round() as u64,
            "period": CPU_PERIOD_US,
        })
    });
    let namespaces: Vec<Value> = ["pid", "ipc", "uts", "mount", "network"]
        .iter()
        .map(|t| json!({"type": t}))
        .collect();
    json!({
        "namespaces": namespaces,
        "resources": {"memory": memory, "cpu": cpu},
        "maskedPaths": defaults::MASKED_PATHS,
        "readonlyPaths": defaults::READONLY_PATHS,
        // Kubernetes' RuntimeDefault: vpod's allow-list, as containerd puts its own in a spec.
        "seccomp": vpod_sandbox::seccomp::runtime_default(),
    })
}

/// `--secret` and `--configmap`: a read-only bind mount of each dir, and a classifier that
/// knows each dir for the volume it is.
fn volumes(args: &RunArgs) -> Result<(Vec<Mount>, MountClassifier), String> {
    let mut mounts = Vec::new();
    let mut classifier = MountClassifier::default();
    let kinds = [
        ("secret", &args.secrets, "/run/secrets"),
        ("configmap", &args.configmaps, "/etc/config"),
    ];
    for (flag, specs, root) in kinds {
        for spec in specs {
            let (name, dir, dest) = split_volume(spec, flag, root)?;
            if !volume_name_ok(&format!("{flag}-{name}")) {
                return Err(format!("--{flag} {spec:?}: NAME must be [A-Za-z0-9_.-]"));
            }
            let dir = std::path::absolute(&dir)
                .map_err(|e| format!("--{flag} {spec:?}: {}: {e}", dir.display()))?;
            let bind = MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(dir.clone())
                .options(vec!["rbind".to_owned(), "ro".to_owned()])
                .build()
                .map_err(|e| format!("--{flag} {spec:?}: {e}"))?;
            mounts.push(bind);
            classifier = match flag {
                "secret" => classifier.with_secret_dir(dir),
                _ => classifier.with_config_dir(dir),
            };
        }
    }
    Ok((mounts, classifier))
}

/// `NAME=DIR[:DEST]` of `--flag`: the name, the dir (which must be one) and the destination
/// (default `default_root/NAME`).
pub fn split_volume(
    spec: &str,
    flag: &str,
    default_root: &str,
) -> Result<(String, PathBuf, String), String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--{flag} {spec:?}: expected NAME=DIR[:DEST]"))?;
    let (dir, dest) = match rest.split_once(':') {
        Some((d, dest)) => (d, dest.to_owned()),
        None => (rest, format!("{default_root}/{name}")),
    };
    if !dest.starts_with('/') {
        return Err(format!("--{flag} {spec:?}: DEST must be an absolute path"));
    }
    let dir = PathBuf::from(dir);
    if !Path::new(&dir).is_dir() {
        return Err(format!(
            "--{flag} {spec:?}: {} is not a directory",
            dir.display()
        ));
    }
    Ok((name.to_owned(), dir, dest))
}

/// Whether `name` can name a pod volume.
fn volume_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `UID[:GID]`, numeric (GID defaults to UID).
pub fn parse_user(s: &str) -> Option<(u32, u32)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().ok()?;
    let gid = match g {
        Some(g) => g.parse().ok()?,
        None => uid,
    };
    Some((uid, gid))
}

#[cfg(test)]
mod tests;
