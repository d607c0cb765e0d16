//! Checks of a pod's jailed VMM from outside, through `/proc` and the cgroup tree: what issue 14
//! asks a running pod's VMM to be (unprivileged, no capabilities, no_new_privs, seccomp, its own
//! namespaces, an empty root, its own cgroup holding the guest's RAM).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The jailed VMM of pod `pod_id`: a `vpod-vmm` process that is PID 1 of its PID namespace and
/// lives in a cgroup named after the pod. Waits up to 10 s for it.
pub fn vmm_of(pod_id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = find_vmm(pod_id) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no jailed vpod-vmm for pod {pod_id}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`vmm_of`] without waiting.
pub fn find_vmm(pod_id: &str) -> Option<u32> {
    let suffix = format!("/{pod_id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        if exe.file_name()? != "vpod-vmm" {
            return None;
        }
        let nspid = field(pid, "NSpid:")?;
        if nspid.split_whitespace().last()? != "1" {
            return None;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cg.lines()
            .any(|l| l.trim_end().ends_with(&suffix))
            .then_some(pid)
    })
}

/// One line of `/proc/<pid>/status`, after its key.
pub fn field(pid: u32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// The uid (real = effective) of `pid`.
pub fn uid(pid: u32) -> u32 {
    let f = field(pid, "Uid:").expect("Uid");
    f.split_whitespace().next().unwrap().parse().unwrap()
}

/// Asserts what a jailed VMM must be; `netns`: the pod's network namespace file, if it has one
/// (without one, the VMM must have an empty one of its own, not the host's).
/// Returns its cgroup v2 directory when the host has the unified hierarchy.
pub fn assert_jailed(pid: u32, netns: Option<&Path>) -> Option<PathBuf> {
    let status = |k: &str| field(pid, k).unwrap_or_else(|| panic!("{k} of {pid}"));
    for k in ["Uid:", "Gid:"] {
        let ids = status(k);
        assert!(
            ids.split_whitespace().all(|i| i != "0"),
            "{k} {ids}: the VMM must not be root"
        );
    }
    assert_eq!(status("CapEff:"), "0000000000000000", "capabilities left");
    assert_eq!(status("CapPrm:"), "0000000000000000", "capabilities left");
    assert_eq!(status("NoNewPrivs:"), "1");
    assert_eq!(status("Seccomp:"), "2", "no seccomp filter");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns} namespace shared with the host");
    }
    use std::os::unix::fs::MetadataExt;
    let its = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    match netns {
        Some(path) => {
            let want = std::fs::metadata(path).unwrap().ino();
            assert_eq!(
                its,
                want,
                "the VMM is not in the pod's netns {}",
                path.display()
            );
        }
        None => {
            let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
            assert_ne!(
                its, ours,
                "a VMM without a pod network shares the host's netns"
            );
        }
    }
    let mut listed: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["dev", "vsock"],
        "the jail's root holds more than it needs"
    );
    let dev: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dev, ["kvm"]);
    cgroup_v2_dir(pid)
}

/// The v2 cgroup directory of `pid` (`None` on a host without the unified hierarchy).
pub fn cgroup_v2_dir(pid: u32) -> Option<PathBuf> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    dir.join("memory.max").exists().then_some(dir)
}

/// Asserts the cgroup limits the VMM and holds its guest's RAM: `memory.max` is set (not `max`)
/// and at least `guest_mib`, and at least `min_used_mib` are charged to it.
pub fn assert_cgroup_holds_guest(dir: &Path, guest_mib: u64, min_used_mib: u64) {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let max = read("memory.max");
    let max: u64 = max
        .parse()
        .unwrap_or_else(|_| panic!("memory.max is {max:?}, not a limit"));
    assert!(
        max >= guest_mib << 20,
        "memory.max {max} below the guest's {guest_mib} MiB"
    );
    let used: u64 = read("memory.current").parse().unwrap();
    assert!(
        used >= min_used_mib << 20,
        "memory.current {used}: the guest's RAM is not charged to the VMM's cgroup"
    );
    let pids = read("pids.max");
    assert_ne!(pids, "max", "pids.max not set");
}

/// Whether a process running as `uid` (no capabilities) can signal `pid`: `kill -0` through
/// util-linux's `setpriv`.
pub fn can_signal_as(uid: u32, pid: u32) -> bool {
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "kill",
            "-0",
            &pid.to_string(),
        ])
        .output()
        .expect("setpriv (util-linux)");
    out.status.success()
}
