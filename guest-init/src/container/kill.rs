//! KillContainer: a signal to the container's process, or to every process
//! in its cgroup.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::containers::Containers;
use super::error::ContainerError;
use super::state::State;

impl Containers {
    /// Sends `signal` to the container's process; `all`: to every process
    /// in its cgroup (SIGKILL through `cgroup.kill`).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
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
        kill(Pid::from_raw(pid), sig).map_err(|e| ContainerError::Io {
            id: id.to_owned(),
            op: format!("signal {sig}"),
            source: e.into(),
        })
    }
}
