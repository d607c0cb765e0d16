//! The root setup against the recording syscall double: the mounts it asks
//! for, in order, without root.

use std::path::PathBuf;

use nix::mount::{MntFlags, MsFlags};

use super::super::config::{BindMount, RootConfig};
use super::super::path::tests::tempdir;
use super::super::syscall::test::{Call, Recording};
use super::setup;

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;

fn root_config(dir: &std::path::Path) -> RootConfig {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    RootConfig {
        rootfs,
        pts: dir.join("pts"),
        hostname: String::new(),
        mounts: Vec::new(),
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        read_only_rootfs: false,
        shm_size_bytes: 0,
        privileged: false,
        pod_ns_holder: None,
        share_pid: false,
        sysctls: Vec::new(),
    }
}

type M = (Option<String>, PathBuf, Option<String>, MsFlags);

fn m(src: Option<&str>, target: PathBuf, fstype: Option<&str>, flags: MsFlags) -> M {
    (src.map(Into::into), target, fstype.map(Into::into), flags)
}

/// The mounts every container gets, before the config's own.
fn base_mounts(cfg: &RootConfig, sys_flags: MsFlags) -> Vec<M> {
    let r = &cfg.rootfs;
    let pts = cfg.pts.to_string_lossy().into_owned();
    vec![
        m(
            None,
            "/".into(),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        ),
        m(
            Some("proc"),
            r.join("proc"),
            Some("proc"),
            NOSUID | NODEV | NOEXEC,
        ),
        m(Some("sysfs"), r.join("sys"), Some("sysfs"), sys_flags),
        m(Some("tmpfs"), r.join("dev"), Some("tmpfs"), NOSUID),
        m(Some(&pts), r.join("dev/pts"), None, MsFlags::MS_BIND),
        m(
            Some("shm"),
            r.join("dev/shm"),
            Some("tmpfs"),
            NOSUID | NODEV | NOEXEC,
        ),
    ]
}

#[test]
fn an_unprivileged_root_gets_its_mounts_masks_and_pivot_in_order() {
    let dir = tempdir("rootfs-full");
    let mut cfg = root_config(&dir);
    let r = cfg.rootfs.clone();
    let file = dir.join("config.txt");
    std::fs::write(&file, "x").unwrap();
    std::fs::create_dir_all(r.join("hidden")).unwrap();
    std::fs::write(r.join("secret"), "s").unwrap();
    std::fs::create_dir_all(r.join("proc/sys")).unwrap();
    cfg.hostname = "web".into();
    cfg.read_only_rootfs = true;
    cfg.shm_size_bytes = 1 << 20;
    cfg.mounts = vec![
        BindMount {
            source: Some(file.clone()),
            destination: "/etc/config.txt".into(),
            read_only: true,
            tmpfs_size_bytes: 0,
        },
        BindMount {
            source: None,
            destination: "/scratch".into(),
            read_only: false,
            tmpfs_size_bytes: 4096,
        },
    ];
    cfg.masked_paths = vec!["/hidden".into(), "/secret".into(), "/not-there".into()];
    cfg.readonly_paths = vec!["/proc/sys".into(), "/not-there".into()];

    let sys = Recording::default();
    setup(&sys, &cfg).unwrap();

    let mut want = base_mounts(&cfg, NOSUID | NODEV | NOEXEC | MsFlags::MS_RDONLY);
    let bind_ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID | NODEV;
    let file_s = file.to_string_lossy().into_owned();
    let proc_sys = r.join("proc/sys").to_string_lossy().into_owned();
    want.extend([
        m(
            Some(&file_s),
            r.join("etc/config.txt"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
        ),
        m(None, r.join("etc/config.txt"), None, bind_ro),
        m(
            Some("tmpfs"),
            r.join("scratch"),
            Some("tmpfs"),
            NOSUID | NODEV,
        ),
        m(
            Some("tmpfs"),
            r.join("hidden"),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
        ),
        m(Some("/dev/null"), r.join("secret"), None, MsFlags::MS_BIND),
        m(
            Some(&proc_sys),
            r.join("proc/sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
        ),
        m(None, r.join("proc/sys"), None, bind_ro | NOEXEC),
        m(
            None,
            "/".into(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        ),
    ]);
    assert_eq!(sys.mounts(), want);
    // A file destination gets a file to bind over.
    assert!(r.join("etc/config.txt").is_file());

    let calls = sys.calls();
    let data = |target: PathBuf| {
        calls.iter().find_map(|c| match c {
            Call::Mount {
                target: t, data, ..
            } if *t == target => data.clone(),
            _ => None,
        })
    };
    assert_eq!(
        data(r.join("scratch")).as_deref(),
        Some("mode=1777,size=4096")
    );
    assert_eq!(
        data(r.join("dev/shm")).as_deref(),
        Some("mode=1777,size=1048576")
    );
    let nodes: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Mknod(p, dev) => Some((p.clone(), *dev)),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 6);
    assert!(nodes.contains(&(r.join("dev/null"), nix::sys::stat::makedev(1, 3))));
    let chmods = calls
        .iter()
        .filter(|c| matches!(c, Call::Chmod(_, 0o666)))
        .count();
    assert_eq!(chmods, 6, "every node is made usable by any uid");
    assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), r.join("dev/ptmx"))));
    // Hostname, then the pivot, then the read-only remount (the last mount).
    let tail: Vec<Call> = calls
        .iter()
        .skip_while(|c| !matches!(c, Call::Sethostname(_)))
        .cloned()
        .collect();
    assert_eq!(
        tail[..5],
        [
            Call::Sethostname("web".into()),
            Call::Chdir(r.clone()),
            Call::PivotRoot(".".into(), ".".into()),
            Call::Umount2(".".into(), MntFlags::MNT_DETACH),
            Call::Chdir("/".into()),
        ]
    );
    assert_eq!(tail.len(), 6);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_privileged_root_keeps_sys_writable_and_skips_masks() {
    let dir = tempdir("rootfs-privileged");
    let mut cfg = root_config(&dir);
    std::fs::create_dir_all(cfg.rootfs.join("hidden")).unwrap();
    cfg.privileged = true;
    cfg.masked_paths = vec!["/hidden".into()];
    cfg.readonly_paths = vec!["/hidden".into()];
    let sys = Recording::default();
    setup(&sys, &cfg).unwrap();
    assert_eq!(sys.mounts(), base_mounts(&cfg, NOSUID | NODEV | NOEXEC));
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Sethostname(_))));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_destination_symlink_cannot_lead_out_of_the_root() {
    let dir = tempdir("rootfs-escape");
    let mut cfg = root_config(&dir);
    let r = cfg.rootfs.clone();
    std::os::unix::fs::symlink("/../../../etc", r.join("data")).unwrap();
    cfg.mounts = vec![BindMount {
        source: None,
        destination: "/data/x".into(),
        read_only: false,
        tmpfs_size_bytes: 0,
    }];
    let sys = Recording::default();
    setup(&sys, &cfg).unwrap();
    let (_, target, _, _) = sys.mounts()[6].clone();
    assert_eq!(target, r.join("etc/x"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_mount_stops_the_setup_and_names_what_and_where() {
    let dir = tempdir("rootfs-fail");
    let cfg = root_config(&dir);
    let sys = Recording::failing_mount_at(cfg.rootfs.join("sys"));
    let e = setup(&sys, &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "mount sysfs on {}: EPERM: Operation not permitted",
            cfg.rootfs.join("sys").display()
        )
    );
    assert_eq!(sys.calls().len(), 3, "nothing after the failed mount");
    std::fs::remove_dir_all(dir).unwrap();
}
