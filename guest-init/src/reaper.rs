//! Reaping orphaned children: PID 1 inherits every orphan in the guest and
//! must wait for it, or it stays a zombie forever.

use std::sync::Arc;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::log::AgentLog;

/// Reaps every exited child whenever SIGCHLD arrives. Runs forever.
///
/// Later work that spawns its own children (containers, exec) must take its
/// exit statuses from here instead of waiting itself, since this loop waits
/// for any pid.
pub async fn reap_children(log: Arc<AgentLog>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            log.error(format!("cannot watch SIGCHLD, zombies will pile up: {e}"));
            return;
        }
    };
    loop {
        reap_all(&log);
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Waits for every child that has exited, without blocking.
pub fn reap_all(log: &AgentLog) -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return reaped,
            Ok(status) => {
                reaped += 1;
                log.debug(format!("reaped {status:?}"));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: no children at all.
            Err(_) => return reaped,
        }
    }
}
