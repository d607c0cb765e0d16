//! From a pod's VM config to a started `vpod-vmm` process: the jail spec (empty root holding
//! `/dev/kvm` and the vsock directory, the pod's uid, cgroup, rlimits), the spawn (namespaces,
//! control socket and uid lease passed in, killed with the thread that spawned it), the launch
//! message.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use vpod_jail::ids::IdLease;
use vpod_jail::spawn::{Namespaces, PassFd};
use vpod_jail::{Bind, CgroupSpec, JailSpec, Rlimits};
use vpod_vmm::control::{Control, HostMessage, Launch};
use vpod_vmm::VmConfig;

use super::config::{VmmProcessConfig, PIDS_BEYOND_VCPUS};
use super::VmProcessError;

/// The control socket's number in the VMM.
const CONTROL_FD: RawFd = 3;
/// The uid lease's number in the VMM (only its jail's waiter keeps it).
const LEASE_FD: RawFd = 4;
/// Where the vsock directory appears in the jail.
const JAIL_VSOCK_DIR: &str = "vsock";

/// What the host gives for one pod's VMM.
#[derive(Debug)]
pub struct VmmLaunch {
    /// The pod's id (names the cgroup and the jail root).
    pub pod_id: String,
    /// The pod's state directory (the jail root goes there unless configured elsewhere).
    pub pod_dir: PathBuf,
    /// The VM, with host paths throughout: the vsock socket must be in `vsock_dir`.
    pub vm: VmConfig,
    /// The directory of the VM's vsock sockets, owned by the pod's uid.
    pub vsock_dir: PathBuf,
    /// The pod's network namespace, joined before the tap is made.
    pub netns: Option<PathBuf>,
    /// The uid lease (`None` unjailed); see [`lease`].
    pub lease: Option<IdLease>,
}

/// Takes a uid for `pod` when `cfg` jails (`None` otherwise).
pub fn lease(cfg: &VmmProcessConfig, pod: &str) -> Result<Option<IdLease>, VmProcessError> {
    if !cfg.jail {
        return Ok(None);
    }
    vpod_jail::ids::lease(&cfg.uid_range, &cfg.lease_dir, pod)
        .map(Some)
        .map_err(|e| VmProcessError::Lease(e.to_string()))
}

/// The jail root of `pod`.
pub(super) fn jail_root(cfg: &VmmProcessConfig, pod: &str, pod_dir: &Path) -> PathBuf {
    match &cfg.jail_root {
        Some(dir) => dir.join(pod),
        None => pod_dir.join("jail"),
    }
}

/// The jail spec for `launch` (and the VM config as the jailed VMM sees it).
pub(super) fn jail_spec(
    cfg: &VmmProcessConfig,
    launch: &VmmLaunch,
    lease: &IdLease,
) -> Result<(JailSpec, VmConfig), VmProcessError> {
    let mut vm = launch.vm.clone();
    let mut spec = JailSpec::new(
        jail_root(cfg, &launch.pod_id, &launch.pod_dir),
        lease.uid(),
        lease.gid(),
    );
    spec.binds = vec![Bind::kvm(), Bind::rw(&launch.vsock_dir, JAIL_VSOCK_DIR)];
    if let Some(v) = &mut vm.vsock {
        let name = v
            .uds_path
            .strip_prefix(&launch.vsock_dir)
            .ok()
            .filter(|n| n.components().count() == 1)
            .ok_or_else(|| {
                VmProcessError::Config(format!(
                    "vsock socket {} is not in the vsock directory {}",
                    v.uds_path.display(),
                    launch.vsock_dir.display()
                ))
            })?;
        v.uds_path = Path::new("/").join(JAIL_VSOCK_DIR).join(name);
    }
    let vcpus = u64::from(vm.vcpus.max(1));
    spec.cgroup = cfg.cgroup_parent.as_ref().map(|parent| CgroupSpec {
        root: "/sys/fs/cgroup".into(),
        parent: parent.clone(),
        name: launch.pod_id.clone(),
        memory_max: Some((u64::from(vm.mem_mib) + cfg.memory_overhead_mib) << 20),
        pids_max: Some(vcpus + PIDS_BEYOND_VCPUS),
        version: None,
    });
    // Writes land only in the writable disks (the guest can't reach past their end) and the
    // console file (capped by the VMM): nothing bigger is ever written.
    let largest_write = vm
        .disks
        .iter()
        .filter(|d| !d.read_only)
        .filter_map(|d| std::fs::metadata(&d.path).ok().map(|m| m.len()))
        .max()
        .unwrap_or(0)
        .max(vm.console_limit);
    spec.rlimits = Rlimits {
        nofile: Rlimits::default().nofile,
        fsize: Some(largest_write + (1 << 20)),
        nproc: vcpus + PIDS_BEYOND_VCPUS,
    };
    spec.waiter_fds = vec![LEASE_FD];
    spec.hostname = "vpod-vmm".into();
    Ok((spec, vm))
}

/// Spawns the VMM with `ctl` (its end of the control socket) and, jailed, the lease; then sends
/// the launch. Call it from the thread that stays for the VMM's whole life: the process gets
/// SIGKILL when the spawning thread ends (so it never outlives a host killed with -9).
pub(super) fn spawn(
    cfg: &VmmProcessConfig,
    launch: &VmmLaunch,
    spec: Option<JailSpec>,
    vm: VmConfig,
    host_end: &Control,
    vmm_end: Control,
) -> Result<Child, VmProcessError> {
    let binary = cfg.binary();
    let spawn_err = |e: std::io::Error| VmProcessError::Spawn {
        binary: binary.clone(),
        source: e,
    };
    // Out of the way of 3 and 4 first, so the moves in the child can't overwrite each other.
    let ctl_fd = high_dup(vmm_end.as_raw_fd()).map_err(spawn_err)?;
    drop(vmm_end);
    let mut pass = vec![PassFd {
        src: ctl_fd.as_raw_fd(),
        dst: CONTROL_FD,
    }];
    let lease_fd = match &launch.lease {
        Some(l) if spec.is_some() => Some(high_dup(l.as_raw_fd()).map_err(spawn_err)?),
        _ => None,
    };
    if let Some(fd) = &lease_fd {
        pass.push(PassFd {
            src: fd.as_raw_fd(),
            dst: LEASE_FD,
        });
    }
    let ns = if spec.is_some() {
        Namespaces::default()
    } else {
        Namespaces {
            mount: false,
            pid: false,
            ipc: false,
            uts: false,
        }
    };
    let mut cmd = Command::new(&binary);
    cmd.arg("--control-fd")
        .arg(CONTROL_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_clear();
    if let Ok(filter) = std::env::var("VPOD_VMM_LOG") {
        cmd.env("VPOD_VMM_LOG", filter);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    vpod_jail::spawn::configure(&mut cmd, ns, &pass)
        .map_err(|e| spawn_err(std::io::Error::other(e.to_string())))?;
    let mut child = cmd.spawn().map_err(spawn_err)?;
    drop((ctl_fd, lease_fd));
    if let Some(stderr) = child.stderr.take() {
        relay_stderr(&launch.pod_id, stderr);
    }
    let msg = HostMessage::Launch(Box::new(Launch {
        vm,
        jail: spec,
        netns: launch.netns.clone(),
        seccomp: cfg.seccomp,
    }));
    if let Err(e) = host_end.send(&msg, &[]) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(VmProcessError::Control(e.to_string()));
    }
    Ok(child)
}

/// At most this much of one line of the VMM's stderr reaches the log.
const MAX_LOG_LINE: usize = 1024;
/// At most this much of the VMM's stderr reaches the log over its life; the rest is read and
/// dropped, so a VMM (or a guest making it complain) can neither fill the host's log nor block
/// on a full pipe.
const MAX_LOG_BYTES: usize = 1 << 20;

/// Sends the VMM's stderr (its `tracing` output: errors by default, more with `VPOD_VMM_LOG`)
/// to the host's log, line by line, from a thread that ends with the pipe.
fn relay_stderr(pod: &str, stderr: std::process::ChildStderr) {
    let id = pod.to_owned();
    let relay = move || {
        relay_lines(stderr, MAX_LOG_BYTES, |line| {
            tracing::warn!("pod {id}: vpod-vmm: {line}")
        })
    };
    if let Err(e) = std::thread::Builder::new()
        .name("vmm-stderr".into())
        .spawn(relay)
    {
        tracing::warn!("pod {pod}: the VMM's stderr is not relayed: {e}");
    }
}

/// Reads `rd` to its end, handing each line (cut at [`MAX_LOG_LINE`]) to `emit` until `budget`
/// bytes have been handed, then one notice; the rest is read and dropped.
fn relay_lines(rd: impl std::io::Read, budget: usize, mut emit: impl FnMut(&str)) {
    use std::io::{BufRead, Read};
    let mut rd = std::io::BufReader::new(rd);
    let mut line = Vec::new();
    let mut logged = 0usize;
    loop {
        line.clear();
        // Bounded: a longer line is cut here and its rest skipped.
        match (&mut rd)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() == MAX_LOG_LINE {
            let _ = rd.skip_until(b'\n');
        }
        if logged >= budget {
            continue;
        }
        logged += line.len();
        // The VMM runs guest-facing code: what it writes must not pass for other log lines or
        // drive an operator's terminal (control characters, escapes).
        let text: String = String::from_utf8_lossy(&line)
            .trim_end()
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
        emit(&text);
        if logged >= budget {
            emit(&format!("{budget} bytes logged; the rest dropped"));
        }
    }
}

/// A close-on-exec copy of `fd` numbered 64 or more.
fn high_dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; we own it from here.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `n` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], budget: usize) -> Vec<String> {
        let mut out = Vec::new();
        relay_lines(input, budget, |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn stderr_lines_are_relayed_cut_and_bounded() {
        assert_eq!(lines(b"one\ntwo\nlast", 1000), ["one", "two", "last"]);
        assert_eq!(
            lines(b"fake\rline \x1b[2Jx\n", 1000),
            ["fake\u{fffd}line \u{fffd}[2Jx"]
        );
        let mut long = vec![b'x'; 3 * MAX_LOG_LINE];
        long.extend_from_slice(b"\nafter\n");
        let got = lines(&long, usize::MAX);
        assert_eq!(got.len(), 2, "a long line is one line, cut");
        assert_eq!(got[0].len(), MAX_LOG_LINE);
        assert_eq!(got[1], "after");
        let many = b"0123456789\n".repeat(100);
        let got = lines(&many, 25);
        assert_eq!(got.len(), 4, "three lines, then the notice: {got:?}");
        assert_eq!(got[3], "25 bytes logged; the rest dropped");
    }
}
