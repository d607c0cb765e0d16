//! [`enter`]: the fork, then every step of the jail in the child, in an order where each step
//! still has what it needs (host paths before `pivot_root`, root before the uid switch).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{cvt, JailError};
use crate::spec::JailSpec;
use crate::{cgroup, mounts, privs, waiter};

/// What the jailed process learns from [`enter`].
#[derive(Debug, Clone, Copy)]
pub struct Entered {
    /// From the call of [`enter`] to its return in the jailed child (fork and every step).
    pub setup: Duration,
}

/// Jails the calling process. Call it first thing in `main`, while the process is single-threaded
/// and still root, in a process started through [`crate::spawn`].
///
/// It forks once. The parent becomes the waiter and never returns from this call (see
/// [the waiter](crate#the-waiter)); the child is PID 1 of the new PID namespace and
/// returns `Ok` once it is jailed. An `Err` from the child leaves it half-jailed: exit at once
/// (the waiter then exits with the same code).
///
/// A VMM that `sigwait`s for SIGTERM/SIGINT blocks them before this call: as PID 1 it would
/// otherwise drop them (the kernel ignores default-action signals sent to a namespace's init).
/// The child keeps the caller's signal mask; the waiter opens those two for itself.
pub fn enter(spec: &JailSpec) -> Result<Entered, JailError> {
    let started = Instant::now();
    spec.validate()?;
    let threads = thread_count()?;
    if threads != 1 {
        return Err(JailError::NotSingleThreaded(threads));
    }
    // Created and limited while the host's tree is in view; joined by being born in it (v2).
    let cgroup = spec.cgroup.as_ref().map(cgroup::prepare).transpose()?;
    let (death_rd, death_wr) = pipe()?;
    // Blocked across the fork so a SIGTERM can't kill the waiter before its handler is in place.
    let old_mask = block_forwarded();
    let forked = fork(cgroup.as_ref().and_then(|c| c.v2_dir.as_ref()));
    let (pid, in_cgroup) = match forked {
        Ok(f) => f,
        Err(e) => {
            // SAFETY: restoring the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(e);
        }
    };
    if pid > 0 {
        drop(death_rd);
        waiter::run(pid, spec, death_wr.as_raw_fd(), &old_mask);
    }
    drop(death_wr);
    arm_parent_death(&death_rd)?;
    // SAFETY: the mask the caller had before `enter`.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    if let Some(cg) = cgroup {
        if !in_cgroup {
            cg.join_self()?;
        }
    }
    jail_child(spec, death_rd)?;
    Ok(Entered {
        setup: started.elapsed(),
    })
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2), or with a v2 cgroup directory, clone3 straight into it: moving a process into a
/// cgroup afterwards waits for an RCU grace period in the kernel (10-20 ms measured), being born
/// there costs nothing. Returns the child's pid (0 in the child) and whether it was born there.
fn fork(cgroup: Option<&File>) -> Result<(libc::pid_t, bool), JailError> {
    if let Some(dir) = cgroup {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: fork semantics (no CLONE_VM, no new stack) in a single-threaded process, so the
        // child has a consistent copy of everything. glibc's fork handlers don't run, so in the
        // child glibc's cached thread id is the parent's: raise() and pthread_kill(pthread_self())
        // aim at that stale id (abort() still ends the process, through its fallback). Nothing on
        // the jail's path uses them, and threads the child creates later have their own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret >= 0 {
            return Ok((ret as libc::pid_t, true));
        }
        // Old kernel (no clone3 / CLONE_INTO_CGROUP) or a cgroup it refuses: fork and join, which
        // reports a refusal with the file's name.
    }
    // SAFETY: single-threaded (checked by `enter`), so the child may do anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::sys("fork"));
    }
    Ok((pid, false))
}

/// The child's steps after the cgroup (see the crate docs for the order).
fn jail_child(spec: &JailSpec, death_rd: File) -> Result<(), JailError> {
    // SAFETY: getpid has no arguments.
    let pid = unsafe { libc::getpid() };
    if spec.new_pid_ns && pid != 1 {
        return Err(JailError::NoPidNamespace(pid));
    }
    if let Some(path) = &spec.netns {
        let err = |step, source| JailError::Netns {
            step,
            path: path.clone(),
            source,
        };
        let ns = File::open(path).map_err(|e| err("open", e))?;
        // SAFETY: setns on an fd we own; CLONE_NEWNET makes the kernel check it is a netns.
        cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
            .map_err(|e| err("setns", e))?;
    }
    // Our own mount table, hostname and IPC whatever the spawn did: the jail never changes the
    // caller's (after the spawn's unshare this is one more, cheap, level of copy).
    // SAFETY: unshare only affects this process.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) })
        .map_err(|_| JailError::sys("unshare(NEWNS|NEWUTS|NEWIPC)"))?;
    mounts::build_and_pivot(spec)?;
    privs::set_hostname(&spec.hostname)?;
    let mut keep = spec.keep_fds.clone();
    keep.push(death_rd.as_raw_fd());
    privs::close_fds_except(&keep)?;
    privs::set_rlimits(&spec.rlimits)?;
    privs::drop_to(spec.uid, spec.gid, 0)?;
    // The uid switch cleared the parent-death signal: arm it again, then look once more.
    arm_parent_death(&death_rd)?;
    drop(death_rd);
    privs::lock_down()
}

/// SIGKILL when the waiter dies; and if it already died (before this call could matter), stop
/// here. The waiter's pid is not visible from inside the PID namespace (getppid() is 0), so the
/// check is a pipe whose write end only the waiter holds: hung up means gone.
fn arm_parent_death(death_rd: &File) -> Result<(), JailError> {
    // SAFETY: plain prctl with a signal number.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map_err(|_| JailError::sys("prctl(PR_SET_PDEATHSIG)"))?;
    let mut pfd = libc::pollfd {
        fd: death_rd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })
        .map_err(|_| JailError::sys("poll(death pipe)"))?;
    if n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        return Err(JailError::ParentGone);
    }
    Ok(())
}

fn pipe() -> Result<(File, File), JailError> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(|_| JailError::sys("pipe2"))?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    })
}

fn block_forwarded() -> libc::sigset_t {
    // SAFETY: local sigsets, initialised before use; only this thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in waiter::FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

fn thread_count() -> Result<usize, JailError> {
    let path = "/proc/self/task";
    let dir = std::fs::read_dir(path).map_err(|source| JailError::Proc {
        path: path.into(),
        source,
    })?;
    Ok(dir.count())
}
