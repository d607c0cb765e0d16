//! KillContainer: a signal to the container's process, or to every process
//! in its cgroup.
//!
//! The container's process is the init of its PID namespace, and the kernel
//! drops a signal sent to such an init from outside its namespace unless the
//! init handles it (SIGKILL and SIGSTOP excepted). Right after its `execve` a
//! process handles nothing yet: a shell installs its `trap` a moment later, a
//! JVM its handlers much later. A SIGTERM sent in that window (a StopContainer
//! right after StartContainer) would be lost and the stop would wait out its
//! whole grace period. So a signal the kernel would drop now is held and
//! delivered as soon as the process handles it (or ignores it on purpose), or
//! dropped when it exits: what the process sees is as if it had been sent
//! after the handler went in.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::containers::{Container, Containers};
use super::error::ContainerError;
use super::state::State;

/// How often a held signal checks for its handler: fast at first (a shell's
/// trap comes within milliseconds), then at this pace.
const HELD_POLL_MAX: Duration = Duration::from_millis(50);

impl Containers {
    /// Sends `signal` to the container's process; `all`: to every process
    /// in its cgroup (SIGKILL through `cgroup.kill`).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let finished = || ContainerError::Finished(id.to_owned());
        if c.state() == State::Exited {
            return Err(finished());
        }
        let pid = c.pid_if(State::can_signal, "nothing to signal")?;
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::Invalid {
            id: id.to_owned(),
            msg: format!("bad signal {signal}"),
        })?;
        if all && sig == Signal::SIGKILL {
            return c.cgroup.kill_all().map_err(c.io("cgroup.kill"));
        }
        if all {
            for p in c.cgroup.pids() {
                let _ = kill(Pid::from_raw(p), sig);
            }
            return Ok(());
        }
        if Disposition::of(pid, sig) == Disposition::DroppedNow {
            if c.hold_signal(sig) {
                self.log.info(format!(
                    "container {id}: {sig} held until its process handles it"
                ));
                tokio::spawn(deliver_when_handled(c, pid, sig));
            }
            return Ok(());
        }
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(finished()),
            Err(e) => Err(ContainerError::Io {
                id: id.to_owned(),
                op: format!("signal {sig}"),
                source: e.into(),
            }),
        }
    }
}

impl Container {
    /// Marks `sig` held; false if it already is (one delivery per signal, as
    /// the kernel merges pending standard signals too).
    fn hold_signal(&self, sig: Signal) -> bool {
        let bit = 1u64 << (sig as i32 - 1);
        let mut held = self.held_signals.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = *held & bit == 0;
        *held |= bit;
        fresh
    }

    fn release_signal(&self, sig: Signal) {
        let bit = 1u64 << (sig as i32 - 1);
        *self.held_signals.lock().unwrap_or_else(|p| p.into_inner()) &= !bit;
    }
}

/// Delivers `sig` to `pid` once the kernel would no longer drop it; gives up
/// when the container's process is gone.
async fn deliver_when_handled(c: Arc<Container>, pid: i32, sig: Signal) {
    let mut exit = c.exit.subscribe();
    let mut tick = Duration::from_millis(1);
    loop {
        if exit.borrow().is_some() || c.state() != (State::Running { pid }) {
            break;
        }
        match Disposition::of(pid, sig) {
            Disposition::DroppedNow => {}
            Disposition::Gone => break,
            Disposition::Delivered => {
                let _ = kill(Pid::from_raw(pid), sig);
                break;
            }
        }
        tokio::select! {
            _ = exit.changed() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        tick = (tick * 2).min(HELD_POLL_MAX);
    }
    c.release_signal(sig);
}

/// What the kernel does with a signal sent now from the agent's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Delivered (or ignored because the process asked for it).
    Delivered,
    /// Dropped: the process is its PID namespace's init and neither handles
    /// nor ignores the signal.
    DroppedNow,
    /// No such process.
    Gone,
}

impl Disposition {
    fn of(pid: i32, sig: Signal) -> Disposition {
        match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(status) => Disposition::from_status(&status, sig),
            Err(_) => Disposition::Gone,
        }
    }

    /// From `/proc/PID/status`: `NSpid` (the pid in each namespace, the
    /// process's own last), `SigCgt` and `SigIgn` (hex masks, bit N-1 for
    /// signal N).
    pub(super) fn from_status(status: &str, sig: Signal) -> Disposition {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            return Disposition::Delivered;
        }
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ns_init = field("NSpid").is_some_and(|v| {
            let ids: Vec<&str> = v.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        });
        if !ns_init {
            return Disposition::Delivered;
        }
        let bit = 1u64 << (sig as i32 - 1);
        let set = |name: &str| {
            field(name)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .is_some_and(|m| m & bit != 0)
        };
        if set("SigCgt") || set("SigIgn") {
            Disposition::Delivered
        } else {
            Disposition::DroppedNow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nspid: &str, cgt: &str, ign: &str) -> String {
        format!(
            "Name:\tsh\nNSpid:\t{nspid}\nSigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n"
        )
    }

    #[test]
    fn a_namespace_init_without_a_handler_drops_the_signal() {
        let fresh = status("57\t1", "0000000000000000", "0000000000000000");
        assert_eq!(
            Disposition::from_status(&fresh, Signal::SIGTERM),
            Disposition::DroppedNow
        );
        // SIGTERM is 15: bit 14 = 0x4000.
        let trapped = status("57\t1", "0000000000004000", "0000000000000000");
        assert_eq!(
            Disposition::from_status(&trapped, Signal::SIGTERM),
            Disposition::Delivered
        );
        assert_eq!(
            Disposition::from_status(&trapped, Signal::SIGINT),
            Disposition::DroppedNow
        );
        let ignoring = status("57\t1", "0000000000000000", "0000000000004000");
        assert_eq!(
            Disposition::from_status(&ignoring, Signal::SIGTERM),
            Disposition::Delivered
        );
        assert_eq!(
            Disposition::from_status(&fresh, Signal::SIGKILL),
            Disposition::Delivered
        );
    }

    #[test]
    fn any_other_process_gets_it() {
        let not_init = status("57\t3", "0000000000000000", "0000000000000000");
        assert_eq!(
            Disposition::from_status(&not_init, Signal::SIGTERM),
            Disposition::Delivered
        );
        let host_ns = status("1", "0000000000000000", "0000000000000000");
        assert_eq!(
            Disposition::from_status(&host_ns, Signal::SIGTERM),
            Disposition::Delivered
        );
        assert_eq!(
            Disposition::from_status("Name:\tx\n", Signal::SIGTERM),
            Disposition::Delivered
        );
    }
}
