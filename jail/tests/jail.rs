//! The jail as the host will see it: `jail-probe` (a stand-in for vpod-vmm) started through
//! `vpod_jail::spawn`, jailed by `vpod_jail::enter`, inspected from outside through /proc.
//! Needs root (as the shim has); no KVM (the /dev/kvm node is only bound, never opened).

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use vpod_jail::spawn::{Namespaces, PassFd};
use vpod_jail::{cgroup_dirs, cgroup_version, cleanup, ids, CgroupSpec, CgroupVersion};

#[test]
fn jailed_process_is_unprivileged_alone_and_limited() {
    let (mut spec, dir) = spec("unpriv", 3_100_001);
    spec.cgroup = Some(cgroup("unpriv"));
    spec.rlimits.nofile = 64;
    let mut probe = Start::new(&spec).spawn();
    let (pid, waiter) = (probe.jailed, probe.waiter());

    assert_eq!(probe.ready["pid"], "1", "PID 1 of its own PID namespace");
    assert_eq!(probe.ready["uid"], "3100001");
    let st = status(pid);
    assert_eq!(st["Uid"], "3100001\t3100001\t3100001\t3100001");
    assert_eq!(st["Gid"], "3100001\t3100001\t3100001\t3100001");
    assert_eq!(st["Groups"], "");
    for cap in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        assert_ne!(ns_link(&pid.to_string(), ns), ns_link("self", ns), "{ns}");
    }
    assert_eq!(ns_link(&pid.to_string(), "net"), ns_link("self", "net"));

    // The root holds exactly the binds, seen from outside and from inside.
    let root = sorted_names(format!("/proc/{pid}/root"));
    assert_eq!(root, ["dev", "run", "vmlinux"]);
    assert_eq!(probe.ready["root"], "dev,run,vmlinux");
    assert_eq!(
        sorted_names(format!("/proc/{pid}/root/dev")),
        ["kvm"],
        "only the device node"
    );
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let opts = |mp: &str| {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mp))
            .unwrap_or_else(|| panic!("{mp} not mounted:\n{mounts}"));
        line.split(' ').nth(5).unwrap().to_string()
    };
    assert!(
        opts("/").starts_with("ro,"),
        "root read-only: {}",
        opts("/")
    );
    assert!(opts("/vmlinux").starts_with("ro,"));
    assert!(opts("/run").starts_with("rw,") && opts("/run").contains("nodev"));
    assert_eq!(
        mounts.lines().count(),
        3,
        "tmpfs + two binds, nothing else:\n{mounts}"
    );
    // /dev/kvm: a node of the host's device number, the pod's own.
    let kvm = fs::metadata(format!("/proc/{pid}/root/dev/kvm")).unwrap();
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o7777),
        (3_100_001, 3_100_001, 0o600)
    );
    assert_eq!(kvm.rdev(), fs::metadata("/dev/kvm").unwrap().rdev());
    let errno = |e: i32| format!("open errno={e}");
    assert_eq!(probe.ask("open /dev/kvm rw"), "open ok");
    assert_eq!(probe.ask("open /vmlinux r"), "open ok");
    assert_eq!(probe.ask("open /vmlinux rw"), errno(libc::EROFS));
    assert_eq!(probe.ask("open /new create"), errno(libc::EROFS));
    assert_eq!(probe.ask("open /run/vsock.sock create"), "open ok");

    // Only stdio is left open; rlimits are set (soft = hard).
    assert_eq!(fds_of(pid), [0, 1, 2]);
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        let l = limits.lines().find(|l| l.starts_with(name)).unwrap();
        l[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max open files"), "64 64");
    assert_eq!(limit("Max core file size"), "0 0");
    assert_eq!(limit("Max processes"), "512 512");
    assert_eq!(probe.ask("hostname"), "hostname vpod-test");

    // The pod's cgroup: limits set, the process in it.
    let cg = spec.cgroup.as_ref().unwrap();
    let dirs = cgroup_dirs(cg).unwrap();
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    match cgroup_version(cg).unwrap() {
        CgroupVersion::V2 => {
            assert_eq!(
                fs::read_to_string(dirs[0].join("memory.max")).unwrap(),
                "268435456\n"
            );
            assert_eq!(
                fs::read_to_string(dirs[0].join("pids.max")).unwrap(),
                "64\n"
            );
            assert!(
                own.contains(&format!("0::/vpod-jail-test/{}", cg.name)),
                "{own}"
            );
        }
        CgroupVersion::V1 => {
            let mem = fs::read_to_string(dirs[0].join("memory.limit_in_bytes")).unwrap();
            assert_eq!(mem, "268435456\n");
            assert_eq!(
                fs::read_to_string(dirs[1].join("pids.max")).unwrap(),
                "64\n"
            );
            for c in ["memory", "pids"] {
                let want = format!(":{c}:/vpod-jail-test/{}", cg.name);
                assert!(own.contains(&want), "{want} in {own}");
            }
        }
    }
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert_eq!(
            procs.trim(),
            pid.to_string(),
            "only the jailed process, not the waiter"
        );
    }

    // The waiter: the pod's uid too, CAP_KILL only, stays outside the PID namespace.
    let w = status(waiter);
    assert_eq!(w["Uid"], "3100001\t3100001\t3100001\t3100001");
    assert_eq!(w["CapEff"], "0000000000000020");
    assert_eq!(w["CapBnd"], "0000000000000000");
    assert_eq!(w["NoNewPrivs"], "1");
    assert_eq!(ns_link(&waiter.to_string(), "pid"), ns_link("self", "pid"));

    let exit = probe.exit(7);
    assert_eq!(
        exit.code(),
        Some(7),
        "the waiter exits with the child's code"
    );
    cleanup(&spec).unwrap();
    assert!(!spec.root.exists());
    assert!(dirs.iter().all(|d| !d.exists()));
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
    tidy(cg);
}

#[test]
fn seccomp_shows_in_status_and_a_forbidden_syscall_is_sigsys() {
    let (mut spec, dir) = spec("seccomp", 3_100_002);
    spec.mount_proc = true;
    let mut start = Start::new(&spec);
    start.seccomp = Some("main");
    let mut probe = start.spawn();
    assert_eq!(probe.ready["root"], "dev,proc,run,vmlinux");
    let inside = probe.inside_status();
    assert_eq!(inside["Seccomp"], "2");
    assert_eq!(inside["NoNewPrivs"], "1");
    assert_eq!(inside["CapEff"], "0000000000000000");
    assert_eq!(inside["Pid"], "1");
    assert_eq!(status(probe.jailed)["Seccomp"], "2");

    probe.send("forbidden");
    assert_eq!(probe.line(), "", "killed before it could answer");
    let st = probe.child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGSYS),
        "the waiter shows SIGSYS: {st}"
    );
    assert!(!st.core_dumped());
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn vcpu_list_also_kills_on_a_forbidden_syscall() {
    let (spec, dir) = spec("seccomp-vcpu", 3_100_003);
    let mut start = Start::new(&spec);
    start.seccomp = Some("vcpu");
    let mut probe = start.spawn();
    probe.send("forbidden");
    let st = probe.child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}");
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sigterm_to_the_waiter_reaches_the_jailed_process() {
    let (spec, dir) = spec("sigterm", 3_100_004);
    let mut probe = Start::new(&spec).spawn();
    assert_eq!(probe.ask("sigwait"), "waiting");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(probe.waiter(), libc::SIGTERM) }, 0);
    assert_eq!(probe.line(), "signal 15");
    assert_eq!(probe.child.wait().unwrap().code(), Some(0));
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kill_9_of_the_waiter_leaves_no_process_and_a_removable_cgroup() {
    // Orphans come to us, so the jailed child can be reaped and seen gone.
    // SAFETY: plain prctl; affects only which process adopts orphans of this test process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (mut spec, dir) = spec("kill9", 3_100_005);
    spec.cgroup = Some(cgroup("kill9"));
    let mut probe = Start::new(&spec).spawn();
    let jailed = probe.jailed;
    probe.child.kill().unwrap();
    assert_eq!(probe.child.wait().unwrap().signal(), Some(libc::SIGKILL));
    let st =
        reap(jailed, Duration::from_secs(5)).expect("the jailed child must die with the waiter");
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "{st:#x}"
    );
    for d in cgroup_dirs(spec.cgroup.as_ref().unwrap()).unwrap() {
        assert_eq!(fs::read_to_string(d.join("cgroup.procs")).unwrap(), "");
    }
    cleanup(&spec).unwrap();
    assert!(!spec.root.exists());
    fs::remove_dir_all(dir).unwrap();
    tidy(spec.cgroup.as_ref().unwrap());
}

#[test]
fn two_pods_under_different_uids_cannot_signal_each_other() {
    let (a_spec, a_dir) = spec("pod-a", 3_100_006);
    let (b_spec, b_dir) = spec("pod-b", 3_100_007);
    let (mut a2_spec, a2_dir) = spec("pod-a2", 3_100_006);
    // Pod A and its twin share the host's PID namespace here, so they can name B's pids at all:
    // what stops them is the uid alone.
    let host_pids = Namespaces {
        pid: false,
        ..Default::default()
    };
    let mut a_spec_nopid = a_spec.clone();
    a_spec_nopid.new_pid_ns = false;
    a2_spec.new_pid_ns = false;
    let mut a = Start {
        ns: host_pids,
        ..Start::new(&a_spec_nopid)
    }
    .spawn();
    let mut b = Start::new(&b_spec).spawn();
    let mut a2 = Start {
        ns: host_pids,
        ..Start::new(&a2_spec)
    }
    .spawn();
    let eperm = format!("kill errno={}", libc::EPERM);
    assert_eq!(a.ask(&format!("kill {}", b.jailed)), eperm);
    assert_eq!(a.ask(&format!("kill {}", b.waiter())), eperm);
    // The control: the same uid could (this is why each pod gets its own).
    assert_eq!(a2.ask(&format!("kill {}", a.jailed)), "kill ok");
    // And B, in its own PID namespace, can't even see A.
    assert_eq!(
        b.ask(&format!("kill {}", a.jailed)),
        format!("kill errno={}", libc::ESRCH)
    );
    for (p, s) in [(a, &a_spec), (b, &b_spec), (a2, &a2_spec)] {
        assert_eq!(p.exit(0).code(), Some(0));
        cleanup(s).unwrap();
    }
    for d in [a_dir, b_dir, a2_dir] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn joins_the_given_network_namespace() {
    let mut holder = Command::new("sleep");
    holder.arg("30");
    // SAFETY: unshare is async-signal-safe.
    unsafe {
        holder.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let mut holder = holder.spawn().unwrap();
    let (mut spec, dir) = spec("netns", 3_100_008);
    spec.netns = Some(format!("/proc/{}/ns/net", holder.id()).into());
    let probe = Start::new(&spec).spawn();
    let net = ns_link(&probe.jailed.to_string(), "net");
    assert_eq!(net, ns_link(&holder.id().to_string(), "net"));
    assert_ne!(net, ns_link("self", "net"));
    assert_eq!(probe.exit(0).code(), Some(0));
    holder.kill().unwrap();
    holder.wait().unwrap();
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_root_that_is_not_empty_is_refused() {
    let (spec, dir) = spec("notempty", 3_100_009);
    fs::create_dir_all(&spec.root).unwrap();
    fs::write(spec.root.join("leftover"), b"x").unwrap();
    let Err((status, out)) = Start::new(&spec).try_spawn() else {
        panic!("a non-empty root must be refused");
    };
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("not empty"), "{out}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_uid_lease_is_held_by_the_waiter_only() {
    let dir = scratch("lease");
    let range = ids::IdRange {
        first: 3_100_010,
        count: 1,
    };
    let lease = ids::lease(&range, &dir.join("ids"), "pod-l").unwrap();
    let (mut spec, sdir) = spec("lease-pod", lease.uid());
    spec.waiter_fds = vec![10];
    let fds = [PassFd {
        src: lease.as_raw_fd(),
        dst: 10,
    }];
    let probe = Start {
        fds: &fds,
        ..Start::new(&spec)
    }
    .spawn();
    drop(lease);
    assert!(fds_of(probe.waiter()).contains(&10));
    assert!(!fds_of(probe.jailed).contains(&10));
    assert!(matches!(
        ids::lease(&range, &dir.join("ids"), "pod-m"),
        Err(ids::IdError::Exhausted(1))
    ));
    assert_eq!(probe.exit(0).code(), Some(0));
    let again = ids::lease(&range, &dir.join("ids"), "pod-m").unwrap();
    assert_eq!(again.uid(), 3_100_010, "free again once the VMM is gone");
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
    fs::remove_dir_all(sdir).unwrap();
}

#[test]
fn born_in_a_v2_cgroup() {
    // On a v2 host /sys/fs/cgroup is the unified hierarchy (the main test covers it with limits);
    // a hybrid host has it at /sys/fs/cgroup/unified, without memory/pids: membership only.
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|r| std::path::Path::new(r).join("cgroup.controllers").exists());
    let Some(root) = root else {
        eprintln!("no cgroup v2 hierarchy here; skipped");
        return;
    };
    let (mut spec, dir) = spec("v2", 3_100_011);
    spec.cgroup = Some(CgroupSpec {
        root: root.into(),
        memory_max: None,
        pids_max: None,
        ..cgroup("v2")
    });
    let probe = Start::new(&spec).spawn();
    let own = fs::read_to_string(format!("/proc/{}/cgroup", probe.jailed)).unwrap();
    let name = &spec.cgroup.as_ref().unwrap().name;
    assert!(own.contains(&format!("0::/vpod-jail-test/{name}")), "{own}");
    assert_eq!(probe.exit(0).code(), Some(0));
    cleanup(&spec).unwrap();
    fs::remove_dir_all(dir).unwrap();
    tidy(spec.cgroup.as_ref().unwrap());
}

/// Prints the cost of `enter` (p50/p90 of 20 runs), with and without a cgroup, and the host's
/// spawn-to-ready time. Debug build: the release figures are the test bed's to measure.
#[test]
fn enter_cost() {
    // No cgroup; the host's /sys/fs/cgroup (v2 or v1) with limits; on a hybrid host also the
    // unified hierarchy without controllers, to time the clone3-into-cgroup path.
    let unified = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    let cases: Vec<Option<CgroupSpec>> = [
        None,
        Some(cgroup("cost")),
        unified.then(|| CgroupSpec {
            root: "/sys/fs/cgroup/unified".into(),
            memory_max: None,
            pids_max: None,
            ..cgroup("cost-v2")
        }),
    ]
    .into_iter()
    .enumerate()
    .filter(|(i, c)| *i < 2 || c.is_some())
    .map(|(_, c)| c)
    .collect();
    for (i, cg) in cases.into_iter().enumerate() {
        let (mut spec, dir) = spec(&format!("cost-{i}"), 3_100_012);
        spec.cgroup = cg;
        let (mut setup, mut total) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let t = Instant::now();
            let probe = Start::new(&spec).spawn();
            total.push(t.elapsed().as_micros());
            setup.push(probe.ready["setup_us"].parse::<u128>().unwrap());
            assert_eq!(probe.exit(0).code(), Some(0));
            cleanup(&spec).unwrap();
        }
        let (s50, s90) = percentiles(&mut setup);
        let (t50, t90) = percentiles(&mut total);
        let cg = spec.cgroup.as_ref().map_or("no cgroup".to_string(), |c| {
            format!("cgroup {:?}", cgroup_version(c).unwrap())
        });
        println!(
            "enter ({cg}): p50 {s50} us, p90 {s90} us; spawn to ready: p50 {t50} us, p90 {t90} us"
        );
        assert!(s50 < 1_000_000, "enter took {s50} us");
        fs::remove_dir_all(dir).unwrap();
        if let Some(cg) = &spec.cgroup {
            tidy(cg);
        }
    }
}
