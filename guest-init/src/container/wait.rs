//! WaitContainer, and how an init's end becomes a Kubernetes exit status.

use nix::sys::wait::WaitStatus;
use vpod_agent_api::pb::ExitStatus;

use super::containers::Containers;
use super::error::ContainerError;
use super::pipe::InitStatus;
use crate::clock::boottime_ns;

impl Containers {
    /// The container's exit status, once it has one.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus, ContainerError> {
        let c = self.get(id)?;
        let mut rx = c.exit.subscribe();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map(|s| s.clone().unwrap_or_default())
            .unwrap_or_default();
        Ok(status)
    }
}

/// What the container's init reported, as Kubernetes names it.
pub(super) fn exit_status(s: InitStatus, oom: bool) -> ExitStatus {
    let (code, signal) = match s {
        InitStatus::Reported { code, signal } => (code, signal),
        InitStatus::Wait(WaitStatus::Exited(_, code)) => (code, 0),
        InitStatus::Wait(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, sig as i32),
        InitStatus::Wait(_) | InitStatus::Lost => (255, 0),
    };
    let reason = if oom && signal == libc::SIGKILL {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ExitStatus {
        exit_code: code,
        signal,
        oom_killed: reason == "OOMKilled",
        finished_boottime_ns: boottime_ns(),
        reason: reason.into(),
        termination_message: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn exit_statuses_get_kubernetes_reasons() {
        let r = |code, signal| InitStatus::Reported { code, signal };
        assert_eq!(exit_status(r(0, 0), false).reason, "Completed");
        assert_eq!(exit_status(r(3, 0), false).reason, "Error");
        let oom = exit_status(r(137, 9), true);
        assert_eq!(
            (oom.exit_code, oom.oom_killed, oom.reason.as_str()),
            (137, true, "OOMKilled")
        );
        // A group that saw an OOM kill but whose process exited by itself.
        assert_eq!(exit_status(r(1, 0), true).reason, "Error");
        let pid = Pid::from_raw(1);
        let killed = exit_status(
            InitStatus::Wait(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            false,
        );
        assert_eq!((killed.exit_code, killed.signal), (137, 9));
    }
}
