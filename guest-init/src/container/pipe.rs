//! How the agent hands a container init its work and hears back: both ends
//! of one protocol in one file.
//!
//! The agent runs `/proc/self/exe __container` ([`CONTAINER_INIT_ARG`]) with
//! the JSON [`InitConfig`] in [`CONFIG_ENV`], the container's stdio on 0-2,
//! and two pipes: [`ERROR_FD`] carries a start error (closed unread when
//! `execve` succeeds), [`REPORT_FD`] carries [`Report`] lines (`pid N`, then
//! `exit CODE SIGNAL`). The parent's end is [`spawn`] and [`Spawned`]; the
//! init's end is [`child`].

use std::fmt::Display;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::sys::wait::WaitStatus;

use super::init::config::InitConfig;
use super::stdio::{self, AsyncEnd};
use crate::reaper::Reaper;

/// Argument that makes vpod-init run the container init.
pub const CONTAINER_INIT_ARG: &str = "__container";
/// Environment variable carrying the JSON [`InitConfig`].
pub const CONFIG_ENV: &str = "VPOD_CONTAINER_INIT";
/// The init's end of the start-error pipe.
pub const ERROR_FD: RawFd = 3;
/// The init's end of the report pipe.
pub const REPORT_FD: RawFd = 4;

/// One line on the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The container process runs (guest pid).
    Pid(i32),
    /// It exited: the shell-style code, and the signal that killed it (0
    /// if none).
    Exit {
        /// 0-255, or 128 + signal.
        code: i32,
        /// The killing signal, 0 for a normal exit.
        signal: i32,
    },
}

impl Report {
    /// The line as written, newline included.
    pub fn line(self) -> String {
        match self {
            Report::Pid(pid) => format!("pid {pid}\n"),
            Report::Exit { code, signal } => format!("exit {code} {signal}\n"),
        }
    }

    /// A line (without its newline); None if it is neither report.
    pub fn parse(line: &str) -> Option<Report> {
        if let Some(pid) = line.strip_prefix("pid ") {
            return pid.trim().parse().ok().map(Report::Pid);
        }
        let mut it = line.split_whitespace();
        if it.next() != Some("exit") {
            return None;
        }
        let code = it.next().and_then(|v| v.parse().ok())?;
        let signal = it.next().and_then(|v| v.parse().ok())?;
        Some(Report::Exit { code, signal })
    }
}

/// How a container init ended, as far as the agent learnt.
#[derive(Debug)]
pub enum InitStatus {
    /// The init reported its process's exit.
    Reported {
        /// See [`Report::Exit`].
        code: i32,
        /// See [`Report::Exit`].
        signal: i32,
    },
    /// No report: the init's own wait status.
    Wait(WaitStatus),
    /// Neither (the reaper dropped the watch).
    Lost,
}

/// Spawns `vpod-init __container` into the cgroup whose `cgroup.procs` is
/// `cgroup_procs`, with `stdio` as its 0-2.
pub fn spawn(
    reaper: &Reaper,
    cfg: &InitConfig,
    stdio: [OwnedFd; 3],
    cgroup_procs: &Path,
) -> std::io::Result<Spawned> {
    let json = serde_json::to_string(cfg).map_err(std::io::Error::other)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (rep_r, rep_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Above the fd numbers the child dup2s to, so nothing is clobbered.
    let high = |fd: &OwnedFd| -> std::io::Result<OwnedFd> {
        Ok(
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new fd we own.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
            })?,
        )
    };
    let err_w = high(&err_w)?;
    let rep_w = high(&rep_w)?;
    let procs = high(&OwnedFd::from(
        std::fs::OpenOptions::new().write(true).open(cgroup_procs)?,
    ))?;
    let (e, r, p) = (err_w.as_raw_fd(), rep_w.as_raw_fd(), procs.as_raw_fd());
    let [i, o, er] = stdio;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("vpod-container")
        .arg(CONTAINER_INIT_ARG)
        .env_clear()
        .env(CONFIG_ENV, json)
        .stdin(i)
        .stdout(o)
        .stderr(er);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw syscalls on fds that stay open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // Join the cgroup before anything runs, so limits hold from
            // the first instruction.
            if libc::write(p, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(e, ERROR_FD) < 0 || libc::dup2(r, REPORT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = reaper.spawn(|| cmd.spawn())?;
    drop(cmd);
    drop((err_w, rep_w, procs));
    Ok(Spawned {
        pid,
        exited: reaper.watch(pid),
        err: stdio::prep(err_r)?,
        report: stdio::prep(rep_r)?,
        report_buf: Vec::new(),
    })
}

/// A spawned container init, the parent's end: its start result, then its
/// exit.
#[derive(Debug)]
pub struct Spawned {
    pid: i32,
    exited: tokio::sync::oneshot::Receiver<WaitStatus>,
    err: AsyncEnd,
    report: AsyncEnd,
    report_buf: Vec<u8>,
}

impl Spawned {
    /// The container process's pid, or the start error it wrote.
    pub async fn started(&mut self) -> Result<i32, String> {
        let mut msg = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdio::read(&self.err, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => msg.extend_from_slice(&buf[..n]),
            }
        }
        if !msg.is_empty() {
            return Err(String::from_utf8_lossy(&msg).into_owned());
        }
        match self.next_report().await {
            Some(line) => match Report::parse(&line) {
                Some(Report::Pid(pid)) => Ok(pid),
                _ => Err(format!("container init reported {line:?} instead of a pid")),
            },
            None => Err(format!(
                "container init (pid {}) ended before reporting a pid",
                self.pid
            )),
        }
    }

    async fn next_report(&mut self) -> Option<String> {
        let mut buf = [0u8; 256];
        loop {
            if let Some(i) = self.report_buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.report_buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            match stdio::read(&self.report, &mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.report_buf.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The reported exit, else the init's own wait status.
    pub async fn finish(mut self) -> InitStatus {
        let mut reported = None;
        while let Some(line) = self.next_report().await {
            if let Some(Report::Exit { code, signal }) = Report::parse(&line) {
                reported = Some(InitStatus::Reported { code, signal });
            }
        }
        let waited = self.exited.await;
        match (reported, waited) {
            (Some(r), _) => r,
            (None, Ok(w)) => InitStatus::Wait(w),
            (None, Err(_)) => InitStatus::Lost,
        }
    }
}

/// The container init's end of the pipes.
pub mod child {
    use std::io::Write;
    use std::os::fd::{BorrowedFd, FromRawFd};

    use super::*;

    /// Marks both pipes close-on-exec: they must not reach the container
    /// process.
    pub fn claim_fds() {
        for fd in [ERROR_FD, REPORT_FD] {
            // SAFETY: fcntl on an fd number; a bad fd only returns EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }

    /// Takes the config out of the environment (the container process must
    /// not inherit it).
    pub fn take_config() -> Result<InitConfig, ConfigError> {
        let json = std::env::var(CONFIG_ENV)?;
        let cfg = serde_json::from_str(&json)?;
        std::env::remove_var(CONFIG_ENV);
        Ok(cfg)
    }

    /// Why [`take_config`] found no config.
    #[derive(Debug, thiserror::Error)]
    pub enum ConfigError {
        /// The variable is missing or not UTF-8.
        #[error(transparent)]
        Env(#[from] std::env::VarError),
        /// It is not an [`InitConfig`].
        #[error(transparent)]
        Json(#[from] serde_json::Error),
    }

    /// Writes one report line (best effort: the agent may be gone).
    pub fn report(r: Report) {
        // SAFETY: REPORT_FD is ours for the life of this process.
        let fd = unsafe { BorrowedFd::borrow_raw(REPORT_FD) };
        let _ = nix::unistd::write(fd, r.line().as_bytes());
    }

    /// Closes the report pipe: in the forked container process, which only
    /// ever writes a start error.
    pub fn close_report() {
        // SAFETY: REPORT_FD belongs to the supervising half of this process.
        unsafe { libc::close(REPORT_FD) };
    }

    /// Closes the error pipe: in the supervising half after the fork, so
    /// the agent sees EOF when the container process execs.
    pub fn close_error() {
        // SAFETY: the container process holds the error pipe now; this copy
        // must close.
        unsafe { libc::close(ERROR_FD) };
    }

    /// Writes a start error for the agent and exits 127.
    pub fn fail(msg: impl Display) -> ! {
        // SAFETY: ERROR_FD is the error pipe handed over by the agent;
        // taking ownership closes it at exit anyway.
        let mut f = unsafe { std::fs::File::from_raw_fd(ERROR_FD) };
        let _ = f.write_all(msg.to_string().as_bytes());
        // SAFETY: _exit skips atexit handlers, which belong to the agent
        // image.
        unsafe { libc::_exit(127) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_junk_is_none() {
        for r in [
            Report::Pid(42),
            Report::Exit {
                code: 137,
                signal: 9,
            },
        ] {
            let line = r.line();
            assert_eq!(Report::parse(line.trim_end_matches('\n')), Some(r));
        }
        assert_eq!(Report::parse("pid x"), None);
        assert_eq!(Report::parse("exit 1"), None);
        assert_eq!(Report::parse("hello"), None);
    }
}
