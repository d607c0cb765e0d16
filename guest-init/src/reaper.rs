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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[test]
    fn reaps_exited_children() {
        // Children spawned and dropped without wait() stay zombies until reaped.
        let pids: Vec<u32> = (0..2)
            .map(|_| std::process::Command::new("true").spawn().unwrap().id())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pids.iter().all(|&p| is_zombie(p)) {
            assert!(Instant::now() < deadline, "children did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = AgentLog::new(16, 0);
        assert!(reap_all(&log) >= 2);
        for pid in pids {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
        assert!(log
            .snapshot()
            .iter()
            .any(|e| e.message.starts_with("reaped")));
        // Nothing left: returns at once.
        assert_eq!(reap_all(&log), 0);
    }
}
