//! The container's own side: `vpod-init __container` runs here, in a fresh
//! process the agent spawned into the container's cgroup with the container's
//! stdio. It enters (or joins) the container's namespaces, forks the
//! container process, and stays as its parent: it forwards signals to it and
//! reports its pid and exit status to the agent (the pipes and their lines
//! are in `container/pipe.rs`).
//!
//! Why a separate exec and not `pre_exec`: a new PID namespace only applies
//! to children of the process that unshares it, and mount namespace setns
//! needs a single-threaded process. The agent is neither.
//!
//! The parts: [`config`] (what the agent decided), `rootfs` and `mount`
//! (the root, through a `syscall` trait), `process` (identity and
//! confinement, then `execve`), [`InitError`].

pub mod config;
mod error;
mod mount;
mod path;
mod process;
mod rootfs;
mod syscall;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::pipe::{self, child::fail, Report};
use config::{InitConfig, Namespaces};
pub use error::InitError;
pub use path::resolve_in;
pub use pipe::CONTAINER_INIT_ARG;
pub use process::known_rlimit;
use process::{set_oom_score_adj, OOM_SCORE_ADJ};

/// Entry point of `vpod-init __container`. Never returns.
pub fn main() -> ! {
    pipe::child::claim_fds();
    let cfg = pipe::child::take_config()
        .map_err(InitError::Config)
        .unwrap_or_else(|e| fail(e));

    // This supervisor sits in the container's cgroup: the OOM killer must
    // pick the container's processes, never it (its death would orphan them
    // and lose their exit). Written before /proc may become the container's.
    let oom_adj = std::fs::read_to_string(OOM_SCORE_ADJ).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(OOM_SCORE_ADJ, "-1000");

    if let Err(e) = enter_namespaces(&cfg.namespaces) {
        fail(e)
    }

    // Signals arrive through sigwait below; the child restores the mask.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old));

    // SAFETY: this process is single-threaded (a fresh exec that started no
    // threads), so the child may do anything.
    match unsafe { fork() } {
        Err(e) => fail(InitError::Fork(e)),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            pipe::child::close_report();
            set_oom_score_adj(cfg.process.oom_score_adj, oom_adj.trim());
            fail(child(&cfg))
        }
        Ok(ForkResult::Parent { child }) => {
            pipe::child::close_error();
            supervise(child)
        }
    }
}

/// Unshares new namespaces, or joins a running container's.
fn enter_namespaces(ns: &Namespaces) -> Result<(), InitError> {
    match ns {
        Namespaces::New(root) => {
            let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
            match root.pod_ns_holder {
                Some(holder) => {
                    join(holder, "ipc")?;
                    if root.share_pid {
                        // Applies to the process forked next: the container's.
                        join(holder, "pid")?;
                    } else {
                        flags |= CloneFlags::CLONE_NEWPID;
                    }
                }
                None => flags |= CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID,
            }
            unshare(flags).map_err(InitError::Unshare)?;
            // /proc is still the guest's; /proc/sys shows this process's IPC
            // namespace (the pod's) and the guest's network (the pod's too).
            for (key, value) in &root.sysctls {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|source| InitError::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                    source,
                })?;
            }
            Ok(())
        }
        Namespaces::Join { pid } => {
            // mnt last: after it, /proc is the container's.
            for ns in ["ipc", "uts", "pid", "mnt"] {
                join(*pid, ns)?;
            }
            Ok(())
        }
    }
}

/// setns into namespace `ns` of process `pid`.
fn join(pid: i32, ns: &'static str) -> Result<(), InitError> {
    let path = format!("/proc/{pid}/ns/{ns}");
    let file =
        std::fs::File::open(&path).map_err(|source| InitError::OpenNamespace { path, source })?;
    setns(file, CloneFlags::empty()).map_err(|source| InitError::JoinNamespace { ns, pid, source })
}

/// The container process: returns only with an error.
fn child(cfg: &InitConfig) -> InitError {
    if let Namespaces::New(root) = &cfg.namespaces {
        if let Err(e) = rootfs::setup(&syscall::Linux, root) {
            return e;
        }
    }
    process::exec(&cfg.process)
}

/// Forwards signals to the container process until it exits, then exits
/// with its status.
fn supervise(child: Pid) -> ! {
    pipe::child::report(Report::Pid(child.as_raw()));
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == Signal::SIGCHLD {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    pipe::child::report(Report::Exit { code, signal: 0 });
                    std::process::exit(code)
                }
                Ok(WaitStatus::Signaled(_, s, _)) => {
                    let code = 128 + s as i32;
                    pipe::child::report(Report::Exit {
                        code,
                        signal: s as i32,
                    });
                    std::process::exit(code)
                }
                _ => continue,
            }
        }
        let _ = kill(child, sig);
    }
}
