//! The host side: start the VMM binary in fresh namespaces.
//!
//! `unshare` happens in the forked child between `fork` and `exec` (`Command::pre_exec`), so the
//! VMM process starts with its own mount, IPC and UTS namespaces, and its children land in a new
//! PID namespace (a process can't change its own PID namespace: [`crate::enter`] forks once so the
//! jailed VMM is PID 1 there). Everything else is done by the VMM itself, in [`crate::enter`],
//! where errors can be reported with context instead of as a bare errno from `spawn`.
//!
//! Why the hook is async-signal-safe (the child of `fork` in a possibly multi-threaded host, e.g.
//! the tokio shim, may only call such functions until `exec`): it only makes raw syscalls through
//! libc's thin wrappers (`unshare`, `dup2`, `fcntl`), reads data captured before the fork (no
//! allocation, no lock, no `Drop`), and builds its error with `io::Error::from_raw_os_error`,
//! which doesn't allocate.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Which namespaces the VMM process gets before `exec` (the network one is joined later, from
/// [`crate::JailSpec::netns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// `CLONE_NEWNS`: its own mount table (needed for `pivot_root`).
    pub mount: bool,
    /// `CLONE_NEWPID`: its children (the jailed VMM) in a new PID namespace.
    pub pid: bool,
    /// `CLONE_NEWIPC`: no SysV IPC or POSIX message queues shared with the host.
    pub ipc: bool,
    /// `CLONE_NEWUTS`: its own hostname.
    pub uts: bool,
}

impl Default for Namespaces {
    /// All four.
    fn default() -> Self {
        Self {
            mount: true,
            pid: true,
            ipc: true,
            uts: true,
        }
    }
}

impl Namespaces {
    /// The `unshare(2)` flags.
    pub fn flags(self) -> libc::c_int {
        let mut f = 0;
        for (on, flag) in [
            (self.mount, libc::CLONE_NEWNS),
            (self.pid, libc::CLONE_NEWPID),
            (self.ipc, libc::CLONE_NEWIPC),
            (self.uts, libc::CLONE_NEWUTS),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }
}

/// The `pre_exec` hook for the default namespaces: `unshare(NEWNS | NEWIPC | NEWUTS | NEWPID)`.
pub fn command_pre_exec() -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    pre_exec_with(Namespaces::default(), Vec::new())
}

fn pre_exec_with(
    ns: Namespaces,
    fds: Vec<(RawFd, RawFd)>,
) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    let flags = ns.flags();
    move || {
        for &(src, dst) in &fds {
            // SAFETY: plain fd syscalls on numbers; `dup2` onto `dst` clears its CLOEXEC flag so
            // it survives exec, and when the fd is already at its number, F_SETFD clears it.
            let ret = unsafe {
                if src == dst {
                    libc::fcntl(src, libc::F_SETFD, 0)
                } else {
                    libc::dup2(src, dst)
                }
            };
            if ret < 0 {
                return Err(last_errno());
            }
        }
        // SAFETY: unshare only changes this (single-threaded, about to exec) child's namespaces.
        if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
            return Err(last_errno());
        }
        Ok(())
    }
}

/// errno as an `io::Error` without allocating.
fn last_errno() -> io::Error {
    // SAFETY: __errno_location returns this thread's errno slot; reading it is always valid.
    io::Error::from_raw_os_error(unsafe { *libc::__errno_location() })
}

/// An fd the VMM inherits: `src` in the host becomes `dst` in the VMM (e.g. the uid lease, or a
/// tap opened by the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassFd {
    /// The host's fd (open until `spawn` returns).
    pub src: RawFd,
    /// Its number in the VMM.
    pub dst: RawFd,
}

/// Why [`configure`] refused.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A `dst` would overwrite a `src` passed after it, or a `dst` repeats.
    #[error("passed fds collide: {0:?}")]
    FdCollision(Vec<PassFd>),
    /// 0, 1 and 2 are the VMM's stdio, set by `Command::stdin`/`stdout`/`stderr`.
    #[error("fd {0} is stdio: set it with Command::stdin/stdout/stderr")]
    Stdio(RawFd),
}

/// Sets up `cmd` to start the VMM in new namespaces with `fds` passed in.
pub fn configure(cmd: &mut Command, ns: Namespaces, fds: &[PassFd]) -> Result<(), SpawnError> {
    for (i, f) in fds.iter().enumerate() {
        if f.dst <= 2 {
            return Err(SpawnError::Stdio(f.dst));
        }
        let later = &fds[i + 1..];
        if later.iter().any(|g| g.src == f.dst || g.dst == f.dst) {
            return Err(SpawnError::FdCollision(fds.to_vec()));
        }
    }
    let pairs = fds.iter().map(|f| (f.src, f.dst)).collect();
    let hook = pre_exec_with(ns, pairs);
    // SAFETY: the hook is async-signal-safe (see the module docs): raw syscalls on captured data.
    unsafe { cmd.pre_exec(hook) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_collisions() {
        let all = Namespaces::default().flags();
        assert_eq!(
            all,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS
        );
        let no_pid = Namespaces {
            pid: false,
            ..Default::default()
        };
        assert_eq!(no_pid.flags() & libc::CLONE_NEWPID, 0);
        let mut cmd = Command::new("true");
        let a = PassFd { src: 7, dst: 3 };
        let b = PassFd { src: 3, dst: 4 };
        assert!(matches!(
            configure(&mut cmd, no_pid, &[a, b]),
            Err(SpawnError::FdCollision(_))
        ));
        assert!(matches!(
            configure(&mut cmd, no_pid, &[PassFd { src: 5, dst: 1 }]),
            Err(SpawnError::Stdio(1))
        ));
        assert!(configure(&mut cmd, no_pid, &[b, a]).is_ok());
    }
}
