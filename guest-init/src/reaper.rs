//! Reaping children: PID 1 inherits every orphan in the guest and must wait
//! for it, or it stays a zombie forever. The agent's own children
//! (containers, exec'd processes) are waited for here too, since this loop
//! waits for any pid: whoever spawns one asks [`Reaper::watch`] for its status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::log::AgentLog;

/// Hands exit statuses to whoever watches a pid.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<WaitStatus>>,
    /// Statuses reaped before anyone asked: a child can exit before its
    /// spawner calls `watch`. Only pids a caller will claim are kept.
    early: HashMap<i32, WaitStatus>,
    expected: std::collections::HashSet<i32>,
}

impl Reaper {
    /// A reaper with no children yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Call before the child can exit unnoticed (right after spawning it):
    /// its status is then kept until [`Reaper::watch`] takes it.
    pub fn expect(&self, pid: i32) {
        self.lock().expected.insert(pid);
    }

    /// Spawns a child with `spawn` and expects its pid, with no window in
    /// which the reaper could take its status unclaimed.
    pub fn spawn(
        &self,
        spawn: impl FnOnce() -> std::io::Result<std::process::Child>,
    ) -> std::io::Result<i32> {
        let mut st = self.lock();
        let child = spawn()?;
        let pid = child.id() as i32;
        st.expected.insert(pid);
        // Dropping a Child neither waits nor kills: the reaper waits.
        drop(child);
        Ok(pid)
    }

    /// The exit status of child `pid`, once it has exited.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<WaitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        st.expected.remove(&pid);
        match st.early.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                st.waiters.insert(pid, tx);
            }
        }
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deliver(&self, pid: i32, status: WaitStatus) -> bool {
        let mut st = self.lock();
        if let Some(tx) = st.waiters.remove(&pid) {
            let _ = tx.send(status);
            true
        } else if st.expected.remove(&pid) {
            st.early.insert(pid, status);
            true
        } else {
            false
        }
    }

    /// Waits for every child that has exited, without blocking.
    pub fn reap_all(&self, log: &AgentLog) -> usize {
        let mut reaped = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return reaped,
                Ok(status) => {
                    reaped += 1;
                    let claimed = status
                        .pid()
                        .is_some_and(|pid| self.deliver(pid.as_raw(), status));
                    if !claimed {
                        log.debug(format!("reaped {status:?}"));
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                // ECHILD: no children at all.
                Err(_) => return reaped,
            }
        }
    }
}

/// Reaps every exited child whenever SIGCHLD arrives. Runs forever.
pub async fn reap_children(reaper: Arc<Reaper>, log: Arc<AgentLog>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            log.error(format!("cannot watch SIGCHLD, zombies will pile up: {e}"));
            return;
        }
    };
    loop {
        reaper.reap_all(&log);
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Waits for every child that has exited, without blocking, claiming none.
pub fn reap_all(log: &AgentLog) -> usize {
    Reaper::default().reap_all(log)
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

    /// Both tests wait for any pid: run them one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn reaps_exited_children() {
        let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
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

    #[test]
    fn hands_statuses_to_watchers_even_when_reaped_first() {
        let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::default();
        let log = AgentLog::new(16, 0);
        let early = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap()
            .id() as i32;
        reaper.expect(early);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_zombie(early as u32) {
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        reaper.reap_all(&log);
        let mut rx = reaper.watch(early);
        assert_eq!(
            rx.try_recv().unwrap(),
            WaitStatus::Exited(Pid::from_raw(early), 3)
        );

        let late = std::process::Command::new("true").spawn().unwrap().id() as i32;
        let mut rx = reaper.watch(late);
        while rx.try_recv().is_err() {
            assert!(Instant::now() < deadline, "status never delivered");
            reaper.reap_all(&log);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
