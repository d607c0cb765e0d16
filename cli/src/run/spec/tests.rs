//! Flags → OCI spec → the agent's request, through `vpod_sandbox::oci` as the shim's specs go:
//! the request is the one `vpod run` wrote by hand before it had a spec.

use clap::Parser;
use vpod_agent_api::pb::{
    CreateContainerRequest, Limits as AgentLimits, Mount, MountKind, Process, SeccompProfile,
    VolumeMedium,
};
use vpod_sandbox::oci::{container_plan, ContainerPlan};

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn args(flags: &[&str]) -> RunArgs {
    Cli::parse_from(std::iter::once("vpod").chain(flags.iter().copied())).run
}

/// The spec of `flags` for `image`, translated as the pod does it.
fn translate(flags: &[&str], image: &RuntimeConfig, tty: (u32, u32)) -> ContainerPlan {
    let a = args(flags);
    let limits = Limits {
        memory: a
            .memory
            .as_deref()
            .map(|m| crate::quantity::parse_bytes(m).unwrap()),
        cpus: a
            .cpus
            .as_deref()
            .map(|c| crate::quantity::parse_cpus(c).unwrap()),
    };
    let c = container(&a, image, "p1", limits, tty).unwrap();
    let mut plan = container_plan("app", &c.spec, "img0", &c.classifier).unwrap();
    c.opts.apply(&mut plan.request);
    plan
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What `vpod run` sent before the spec: containerd's defaults, sorted capabilities aside; the
/// RuntimeDefault seccomp profile now comes as its rules (the spec's `linux.seccomp`).
fn hand_written(process: Process) -> CreateContainerRequest {
    let mut caps = strings(defaults::CAPABILITIES);
    caps.sort();
    CreateContainerRequest {
        id: "app".into(),
        image_disk: "img0".into(),
        process: Some(Process {
            capabilities: caps,
            seccomp: SeccompProfile::Unconfined as i32,
            seccomp_rules: Some(vpod_agent_api::seccomp::runtime_default()),
            ..process
        }),
        hostname: "p1".into(),
        mounts: Vec::new(),
        limits: Some(AgentLimits {
            cpu_period_us: 100_000,
            ..Default::default()
        }),
        read_only_rootfs: false,
        masked_paths: strings(defaults::MASKED_PATHS),
        readonly_paths: strings(defaults::READONLY_PATHS),
        shm_size_bytes: 0,
        privileged: false,
        share_pid_namespace: false,
        sysctls: Default::default(),
        termination_message_path: String::new(),
    }
}

/// No flags: the image's entrypoint and command, its env with PATH and HOSTNAME, root, `/`.
#[test]
fn defaults_give_the_images_process_confined_as_containerd_does() {
    let image = RuntimeConfig {
        entrypoint: Some(strings(&["/bin/app"])),
        cmd: Some(strings(&["--serve"])),
        env: Some(strings(&["IMAGE_ENV=1"])),
        ..Default::default()
    };
    let plan = translate(&["img"], &image, (0, 0));
    let want = hand_written(Process {
        args: strings(&["/bin/app", "--serve"]),
        env: strings(&[
            "IMAGE_ENV=1",
            &format!("PATH={}", defaults::PATH),
            "HOSTNAME=p1",
        ]),
        cwd: "/".into(),
        ..Default::default()
    });
    assert_eq!(plan.request, want);
    assert!(plan.watched.is_empty() && plan.once.is_empty());
}

/// Every flag that reaches the container.
#[test]
fn every_flag_reaches_the_request() {
    let dir = std::env::temp_dir().join(format!("vpod-spec-{}", std::process::id()));
    let (tok, cfg) = (dir.join("tok"), dir.join("cfg"));
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::create_dir_all(&cfg).unwrap();
    let image = RuntimeConfig {
        cmd: Some(strings(&["sh"])),
        env: Some(strings(&["PATH=/bin", "K=image"])),
        working_dir: Some("/image-wd".into()),
        user: Some("5".into()),
        ..Default::default()
    };
    let secret = format!("tok={}", tok.display());
    let config = format!("cfg={}:/etc/app", cfg.display());
    let flags = [
        "-e",
        "K=V",
        "-t",
        "-i",
        "--read-only",
        "--privileged",
        "--memory",
        "64Mi",
        "--cpus",
        "0.5",
        "-u",
        "1000:50",
        "-w",
        "/work",
        "--secret",
        &secret,
        "--configmap",
        &config,
        "img",
        "--",
        "echo",
        "hi",
    ];
    let plan = translate(&flags, &image, (30, 100));
    let mut want = hand_written(Process {
        args: strings(&["echo", "hi"]),
        env: strings(&["PATH=/bin", "HOSTNAME=p1", "TERM=xterm", "K=V"]),
        cwd: "/work".into(),
        uid: 1000,
        gid: 50,
        tty: true,
        stdin: true,
        tty_rows: 30,
        tty_cols: 100,
        ..Default::default()
    });
    want.limits = Some(AgentLimits {
        memory_bytes: 64 << 20,
        cpu_quota_us: 50_000,
        cpu_period_us: 100_000,
        ..Default::default()
    });
    want.read_only_rootfs = true;
    want.privileged = true;
    // Volume names are the translation's own: check them apart.
    let mut got = plan.request.clone();
    let mounts = std::mem::take(&mut got.mounts);
    assert_eq!(got, want);
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    for (m, dest, dir, medium) in [
        (&mounts[0], "/run/secrets/tok", &tok, VolumeMedium::Memory),
        (&mounts[1], "/etc/app", &cfg, VolumeMedium::Disk),
    ] {
        let read_only_volume = Mount {
            destination: dest.into(),
            kind: MountKind::Volume as i32,
            source: m.source.clone(),
            read_only: true,
            ..Default::default()
        };
        assert_eq!(m, &read_only_volume);
        let vol = plan.watched.iter().find(|v| v.name == m.source).unwrap();
        assert_eq!((&vol.dir, vol.medium), (dir, medium), "{dest}");
    }
    assert_eq!(plan.watched.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The image's user and workdir when the flags name none; a relative volume dir is made
/// absolute.
#[test]
fn the_images_user_and_workdir_and_relative_volume_dirs() {
    let image = RuntimeConfig {
        cmd: Some(strings(&["sh"])),
        working_dir: Some("/image-wd".into()),
        user: Some("7".into()),
        ..Default::default()
    };
    let plan = translate(&["--secret", "here=.", "img"], &image, (0, 0));
    let p = plan.request.process.unwrap();
    assert_eq!((p.uid, p.gid, p.cwd.as_str()), (7, 7, "/image-wd"));
    assert_eq!(plan.watched[0].dir, std::env::current_dir().unwrap());
}

#[test]
fn what_the_flags_cannot_make_a_container_of_is_refused() {
    let none = RuntimeConfig::default();
    let limits = Limits::default();
    let e = container(&args(&["img"]), &none, "p1", limits, (0, 0)).unwrap_err();
    assert!(e.contains("no entrypoint or command"), "{e}");
    let named = RuntimeConfig {
        cmd: Some(strings(&["sh"])),
        user: Some("nobody".into()),
        ..Default::default()
    };
    let e = container(&args(&["img"]), &named, "p1", limits, (0, 0)).unwrap_err();
    assert!(e.contains("only numeric UID[:GID]"), "{e}");
    let dir = std::env::temp_dir();
    let bad = format!("a/b={}", dir.display());
    let e = container(
        &args(&["--secret", &bad, "img", "sh"]),
        &none,
        "p1",
        limits,
        (0, 0),
    )
    .unwrap_err();
    assert!(e.contains("NAME must be [A-Za-z0-9_.-]"), "{e}");
}

#[test]
fn users_and_volume_specs() {
    assert_eq!(parse_user("1000"), Some((1000, 1000)));
    assert_eq!(parse_user("1000:50"), Some((1000, 50)));
    assert_eq!(parse_user("nobody"), None);
    let dir = std::env::temp_dir();
    let d = dir.display();
    let (n, p, dest) = split_volume(&format!("tok={d}"), "secret", "/run/secrets").unwrap();
    assert_eq!((n.as_str(), dest.as_str()), ("tok", "/run/secrets/tok"));
    assert_eq!(p, dir);
    let (_, _, dest) = split_volume(&format!("tok={d}:/x/y"), "secret", "/r").unwrap();
    assert_eq!(dest, "/x/y");
    assert!(split_volume("tok", "secret", "/r").is_err());
    assert!(split_volume("tok=/nonexistent-dir", "secret", "/r")
        .unwrap_err()
        .contains("not a directory"));
    assert!(split_volume(&format!("tok={d}:rel"), "secret", "/r").is_err());
}
