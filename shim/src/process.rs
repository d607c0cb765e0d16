//! One process as containerd sees it: the sandbox task, a container's task
//! and an exec'd process alike. Its status, its exit, its stdio; its pid is
//! the shim's (the real process lives in the guest, out of the host's reach).

use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::types::task::Status;
use tokio::sync::{watch, Notify};

use crate::error::Result;
use crate::io::Stdio;

/// How and when a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit status (128 + signal for a signalled process).
    pub code: u32,
    /// When the shim learnt it.
    pub at: Timestamp,
}

impl Exit {
    /// An exit of status `code` now.
    pub fn now(code: u32) -> Exit {
        Exit {
            code,
            at: Timestamp::now(),
        }
    }
}

/// A process's life: created, running, stopped, once each and in that order
/// (a process may also stop without having run).
#[derive(Debug)]
pub struct Process {
    stdio: Stdio,
    status: Mutex<Status>,
    exit: watch::Sender<Option<Exit>>,
    /// CloseIO: the end of stdin (a read-write FIFO never sees EOF).
    stdin_closed: Arc<Notify>,
}

/// A wait for a process's exit that does not keep the process's record
/// alive: if the record goes (its task deleted) the wait fails.
#[derive(Debug)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    /// The exit, once there is one.
    pub async fn wait(mut self) -> Result<Exit> {
        let exit = self.0.wait_for(|e| e.is_some()).await?;
        Ok(exit.clone().expect("waited for Some"))
    }
}

impl Process {
    /// A created process with containerd's FIFOs `stdio`.
    pub fn new(stdio: Stdio) -> Process {
        Process {
            stdio,
            status: Mutex::new(Status::CREATED),
            exit: watch::channel(None).0,
            stdin_closed: Arc::new(Notify::new()),
        }
    }

    /// The pid containerd gets: the shim's own, for every process.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Its FIFOs.
    pub fn stdio(&self) -> &Stdio {
        &self.stdio
    }

    /// Its status now.
    pub fn status(&self) -> Status {
        *self.lock_status()
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.status() == Status::RUNNING
    }

    /// A created process starts running; false (and no change) for one
    /// that already ran or stopped, e.g. one whose exit came before its start
    /// was recorded.
    pub fn set_running(&self) -> bool {
        let mut status = self.lock_status();
        if *status != Status::CREATED {
            return false;
        }
        *status = Status::RUNNING;
        true
    }

    /// It ended with `code`: stopped, and its exit wakes every waiter. The
    /// first exit is final; a later one returns the first.
    pub fn set_exited(&self, code: u32) -> Exit {
        let mut status = self.lock_status();
        *status = Status::STOPPED;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit::now(code));
            true
        });
        drop(status);
        self.exit().expect("just set")
    }

    /// Its exit, if it ended.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Its exit, or (not ended, as for a delete of a created process) a
    /// status of 0 now.
    pub fn exit_or_now(&self) -> Exit {
        self.exit().unwrap_or_else(|| Exit::now(0))
    }

    /// A wait for its exit.
    pub fn watch_exit(&self) -> ExitWatch {
        ExitWatch(self.exit.subscribe())
    }

    /// CloseIO: ends its stdin.
    pub fn close_stdin(&self) {
        self.stdin_closed.notify_one();
    }

    /// What [`Process::close_stdin`] notifies.
    pub fn stdin_closed(&self) -> Arc<Notify> {
        self.stdin_closed.clone()
    }

    /// Its State answer; the caller adds the ids (and a task's bundle).
    pub fn state(&self) -> api::StateResponse {
        let exit = self.exit();
        api::StateResponse {
            pid: self.pid(),
            status: self.status().into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map(|e| e.at).into(),
            ..Default::default()
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn process() -> Process {
        Process::new(Stdio {
            stdin: "/fifo/in".into(),
            stdout: "/fifo/out".into(),
            ..Stdio::default()
        })
    }

    #[test]
    fn created_then_running_then_stopped() {
        let p = process();
        assert_eq!(p.status(), Status::CREATED);
        assert!(p.exit().is_none());
        assert!(p.set_running());
        assert!(p.is_running());
        // Started twice: still the one run.
        assert!(!p.set_running());
        let exit = p.set_exited(137);
        assert_eq!(exit.code, 137);
        assert_eq!(p.status(), Status::STOPPED);
        assert_eq!(p.exit(), Some(exit.clone()));
        // A stopped process does not run again, and its exit stays the first.
        assert!(!p.set_running());
        assert_eq!(p.status(), Status::STOPPED);
        assert_eq!(p.set_exited(1), exit);
    }

    #[test]
    fn an_exit_before_the_start_is_recorded_wins() {
        let p = process();
        p.set_exited(0);
        assert!(!p.set_running());
        assert_eq!(p.status(), Status::STOPPED);
    }

    #[test]
    fn state_reports_stdio_status_and_exit() {
        let p = process();
        let s = p.state();
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.status, Status::CREATED.into());
        assert_eq!(
            (s.stdin.as_str(), s.stdout.as_str()),
            ("/fifo/in", "/fifo/out")
        );
        assert_eq!(s.exit_status, 0);
        assert!(s.exited_at.is_none());
        p.set_running();
        let exit = p.set_exited(3);
        let s = p.state();
        assert_eq!(s.status, Status::STOPPED.into());
        assert_eq!(s.exit_status, 3);
        assert_eq!(s.exited_at.into_option(), Some(exit.at));
        assert!(p.stdio().has_stdin());
    }

    #[test]
    fn a_delete_before_the_exit_reports_status_0() {
        let p = process();
        assert_eq!(p.exit_or_now().code, 0);
        p.set_exited(9);
        assert_eq!(p.exit_or_now().code, 9);
    }

    #[tokio::test]
    async fn waiters_wake_at_the_exit_and_after_it() {
        let p = Arc::new(process());
        let early = p.watch_exit();
        let waiter = tokio::spawn(early.wait());
        tokio::task::yield_now().await;
        p.set_exited(42);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.code, 42);
        // A wait after the exit returns at once.
        assert_eq!(p.watch_exit().wait().await.unwrap().code, 42);
    }

    #[tokio::test]
    async fn a_wait_fails_when_the_process_record_goes() {
        let p = process();
        let w = p.watch_exit();
        drop(p);
        assert!(w.wait().await.is_err());
    }

    #[tokio::test]
    async fn close_stdin_notifies_the_stdin_reader() {
        let p = process();
        let closed = p.stdin_closed();
        p.close_stdin();
        tokio::time::timeout(Duration::from_secs(10), closed.notified())
            .await
            .expect("CloseIO reaches the reader");
    }
}
