//! The parent left outside the PID namespace after [`crate::enter`] forks: it forwards SIGTERM and
//! SIGINT to the jailed child, keeps the fds the spec gives it (the uid lease), and ends the way
//! the child ended: the same exit code, or the same signal re-raised on itself, so the host sees
//! e.g. SIGSYS for a VMM killed by seccomp. It drops to the pod's uid with only CAP_KILL (to
//! signal the child while the child is still root during setup), no_new_privs, not dumpable.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::privs;
use crate::spec::JailSpec;

/// The signals passed on to the child.
pub(crate) const FORWARDED: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// The child's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; a pid that is gone gives ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs the waiter in the parent of `child` until the child is gone; never returns.
/// `death_pipe` is the write end the child watches to tell that this process is alive.
pub(crate) fn run(
    child: libc::pid_t,
    spec: &JailSpec,
    death_pipe: RawFd,
    mask: &libc::sigset_t,
) -> ! {
    CHILD.store(child, Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with a plain handler; `forward` only calls kill.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // The caller's mask, but with the forwarded signals open even if the caller blocked them (a
    // VMM blocks them to sigwait): those that arrived since the fork are forwarded now.
    // SAFETY: `mask` is the caller's initialised signal mask, copied and edited locally.
    unsafe {
        let mut open = *mask;
        for sig in FORWARDED {
            libc::sigdelset(&mut open, sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &open, std::ptr::null_mut());
    }

    let mut keep: Vec<RawFd> = spec.keep_fds.clone();
    keep.extend(&spec.waiter_fds);
    keep.push(death_pipe);
    if let Err(e) = shed(spec, &keep) {
        eprintln!("vpod-jail: waiter: {e}");
    }

    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid out pointer.
        let ret = unsafe { libc::waitpid(child, &mut status, 0) };
        if ret == child {
            break;
        }
        if ret < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: plain exit.
            unsafe { libc::_exit(125) };
        }
    }
    if libc::WIFEXITED(status) {
        // SAFETY: plain exit; nothing of the parent's state needs flushing (the child printed).
        unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
    }
    let sig = libc::WTERMSIG(status);
    // SAFETY: back to the default action for `sig`, unblocked, then raised on ourselves: the
    // process dies of the same signal (no core: not dumpable, RLIMIT_CORE 0).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

/// What the waiter gives up: other fds, root (keeping CAP_KILL), core dumps, new privileges.
fn shed(spec: &JailSpec, keep: &[RawFd]) -> Result<(), crate::error::JailError> {
    privs::close_fds_except(keep)?;
    let _ = privs::set_rlimit(libc::RLIMIT_CORE, 0);
    // A credential change clears the parent-death signal the host may have set: keep it.
    let mut pdeath: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut pdeath as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    privs::drop_to(spec.uid, spec.gid, privs::CAP_KILL)?;
    if pdeath != 0 {
        // SAFETY: plain prctl with a signal number.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong, 0, 0, 0) };
    }
    privs::lock_down()
}
