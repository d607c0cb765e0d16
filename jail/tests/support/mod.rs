//! Starting `jail-probe` the way the host will start the VMM, and looking at it from outside.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vpod_jail::spawn::{self, Namespaces, PassFd};
use vpod_jail::{Bind, CgroupSpec, JailSpec};

/// The test's own scratch directory (host side).
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(format!("/tmp/vpod-jail-test/{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A spec for test `name` under uid/gid `id`: stdio kept, a few binds, no cgroup.
pub fn spec(name: &str, id: u32) -> (JailSpec, PathBuf) {
    let dir = scratch(name);
    let file = dir.join("kernel");
    fs::write(&file, b"not a kernel").unwrap();
    // Writable by anyone on the host: only the read-only bind keeps the VMM from writing it.
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let shared = dir.join("vsock");
    fs::create_dir_all(&shared).unwrap();
    // The host hands the pod's socket directory to the pod's uid.
    std::os::unix::fs::chown(&shared, Some(id), Some(id)).unwrap();
    let mut s = JailSpec::new(dir.join("jail/root"), id, id);
    s.binds = vec![
        Bind::kvm(),
        Bind::ro(&file, "vmlinux"),
        Bind::rw(&shared, "run"),
    ];
    s.hostname = "vpod-test".into();
    (s, dir)
}

/// The pod cgroup the tests use, on whatever hierarchy the host has at /sys/fs/cgroup.
pub fn cgroup(name: &str) -> CgroupSpec {
    CgroupSpec {
        root: "/sys/fs/cgroup".into(),
        parent: "vpod-jail-test".into(),
        name: format!("{name}-{}", std::process::id()),
        memory_max: Some(256 << 20),
        pids_max: Some(64),
        version: None,
    }
}

/// After a test's [`vpod_jail::cleanup`]: the shared parent cgroup and scratch base, if nothing
/// else uses them any more (best effort: tests run in parallel).
pub fn tidy(cg: &CgroupSpec) {
    if let Ok(dirs) = vpod_jail::cgroup_dirs(cg) {
        for d in dirs {
            if let Some(parent) = d.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
    let _ = fs::remove_dir("/tmp/vpod-jail-test");
}

/// A running probe: the waiter we spawned and the jailed child under it.
pub struct Probe {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    /// The `ready` line's fields.
    pub ready: BTreeMap<String, String>,
    /// Host pid of the jailed process.
    pub jailed: libc::pid_t,
}

pub struct Start<'a> {
    pub spec: &'a JailSpec,
    pub ns: Namespaces,
    pub seccomp: Option<&'a str>,
    pub fds: &'a [PassFd],
}

impl<'a> Start<'a> {
    pub fn new(spec: &'a JailSpec) -> Self {
        Self {
            spec,
            ns: Namespaces::default(),
            seccomp: None,
            fds: &[],
        }
    }

    /// Spawns the probe and waits for its `ready` line; `Err` with the exit status and stderr if
    /// it ended instead.
    pub fn try_spawn(&self) -> Result<Probe, (ExitStatus, String)> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jail-probe"));
        cmd.arg(serde_json::to_string(self.spec).unwrap());
        if let Some(kind) = self.seccomp {
            cmd.args(["--seccomp", kind]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        spawn::configure(&mut cmd, self.ns, self.fds).unwrap();
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if !line.starts_with("ready ") {
            drop(child.stdin.take());
            let status = child.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Err((status, format!("{line}{err}")));
        }
        let ready = line
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let jailed = child_of(child.id() as libc::pid_t);
        Ok(Probe {
            stdin: child.stdin.take(),
            child,
            out,
            ready,
            jailed,
        })
    }

    pub fn spawn(&self) -> Probe {
        match self.try_spawn() {
            Ok(p) => p,
            Err((status, out)) => panic!("probe ended ({status}): {out}"),
        }
    }
}

impl Probe {
    pub fn waiter(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    /// One command, one answer line.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// `status` from inside (needs mount_proc): field -> value.
    pub fn inside_status(&mut self) -> BTreeMap<String, String> {
        self.send("status");
        let mut m = BTreeMap::new();
        loop {
            let l = self.line();
            if l == "end" || l.is_empty() {
                return m;
            }
            if let Some((k, v)) = l.trim_start_matches("status ").split_once(':') {
                m.insert(k.to_string(), v.trim().to_string());
            }
        }
    }

    /// Ends the probe with `exit code` and returns the waiter's status.
    pub fn exit(mut self, code: u8) -> ExitStatus {
        self.send(&format!("exit {code}"));
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

/// The one child of `parent` (found through /proc, as the host will find a VMM).
pub fn child_of(parent: libc::pid_t) -> libc::pid_t {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: libc::pid_t = after.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == parent {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no child of {parent}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// /proc/PID/status read from outside: field -> value.
pub fn status(pid: libc::pid_t) -> BTreeMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

pub fn ns_link(pid: &str, ns: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

pub fn sorted_names(dir: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn fds_of(pid: libc::pid_t) -> Vec<RawFd> {
    let mut v: Vec<RawFd> = sorted_names(format!("/proc/{pid}/fd"))
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    v.sort();
    v
}

/// Reaps `pid` (a child of ours, e.g. through PR_SET_CHILD_SUBREAPER) within `timeout`.
pub fn reap(pid: libc::pid_t, timeout: Duration) -> Option<libc::c_int> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut st = 0;
        // SAFETY: waitpid on a specific pid with a valid out pointer, non-blocking.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// p50 and p90 of `v` (sorted in place).
pub fn percentiles(v: &mut [u128]) -> (u128, u128) {
    v.sort_unstable();
    (v[v.len() / 2], v[(v.len() * 9) / 10])
}
