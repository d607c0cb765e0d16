//! The pod's shared namespaces in the guest, held by one small process (the
//! guest's "pause"): the IPC namespace every container of a Kubernetes pod
//! shares (System V IPC, POSIX message queues and the `kernel.shm*`,
//! `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` sysctls that live there), and a
//! PID namespace for pods that share their process namespace
//! (`shareProcessNamespace: true`): the holder is its init, each container's
//! process an ordinary member that sees the others.
//!
//! `vpod-init __pod-ns` ([`POD_NS_ARG`]) is spawned with its IPC namespace
//! already new (unshared before the exec) and unshares a PID namespace; it
//! forks the namespace's init, which writes its guest pid on stdout and then
//! only reaps orphans until the pod goes. Containers join through
//! `/proc/<holder>/ns/{ipc,pid}`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, ForkResult, Pid};

use super::containers::Containers;
use super::error::ContainerError;
use crate::reaper::Reaper;

/// Argument that makes vpod-init hold the pod's namespaces.
pub const POD_NS_ARG: &str = "__pod-ns";

/// The holder's guest pid, made on first use (it outlives every container).
#[derive(Debug, Default)]
pub struct PodNamespaces {
    holder: std::sync::Mutex<Option<i32>>,
}

impl PodNamespaces {
    /// The holder's pid, spawning it the first time.
    pub fn holder(&self, reaper: &Reaper) -> std::io::Result<i32> {
        let mut h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pid) = *h {
            if std::path::Path::new(&format!("/proc/{pid}/ns/pid")).exists() {
                return Ok(pid);
            }
        }
        let pid = spawn(reaper)?;
        *h = Some(pid);
        Ok(pid)
    }
}

impl Containers {
    /// The pod's namespace holder (see [`PodNamespaces`]).
    pub(super) fn pod_ns_holder(&self, id: &str) -> Result<i32, ContainerError> {
        self.pod_ns
            .holder(&self.reaper)
            .map_err(|source| ContainerError::Io {
                id: id.to_owned(),
                op: "hold the pod's IPC and PID namespaces".into(),
                source,
            })
    }
}

fn spawn(reaper: &Reaper) -> std::io::Result<i32> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("vpod-pod")
        .arg(POD_NS_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; unshare is a raw syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWIPC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut out = None;
    let first = reaper.spawn(|| {
        let mut child = cmd.spawn()?;
        out = child.stdout.take();
        Ok(child)
    })?;
    // The first process exits once its child (the namespace's init) is forked;
    // the reaper collects it. The init is re-parented to the agent.
    drop(reaper.watch(first));
    let mut line = String::new();
    if let Some(mut o) = out {
        o.read_to_string(&mut line)?;
    }
    line.trim().parse().map_err(|_| {
        std::io::Error::other(format!(
            "the pod namespace holder wrote {line:?} instead of its pid"
        ))
    })
}

/// Entry point of `vpod-init __pod-ns`. Never returns.
pub fn main() -> ! {
    if unshare(CloneFlags::CLONE_NEWPID).is_err() {
        std::process::exit(1);
    }
    let all = SigSet::all();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None);
    // SAFETY: a fresh single-threaded exec.
    match unsafe { fork() } {
        Err(_) => std::process::exit(1),
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            std::process::exit(0)
        }
        Ok(ForkResult::Child) => {
            // stdout goes: the agent reads to its end.
            // SAFETY: closing our own stdout.
            unsafe { libc::close(1) };
            loop {
                // Every signal is blocked: SIGCHLD wakes this, nothing kills
                // it but SIGKILL (the namespace's init ignores the rest).
                let _ = all.wait();
                while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if st == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
        }
    }
}
