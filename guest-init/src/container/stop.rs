//! StopContainer: signal, grace period, SIGKILL.

use std::time::Duration;

use vpod_agent_api::pb::ExitStatus;

use super::containers::Containers;
use super::error::ContainerError;
use super::state::State;
use crate::clock::boottime_ns;

impl Containers {
    /// Signal (SIGTERM if 0), grace period, SIGKILL; the exit status. A
    /// container that never started exits as `NeverStarted`.
    pub async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: i32,
    ) -> Result<ExitStatus, ContainerError> {
        let c = self.get(id)?;
        let st = c.state();
        if !st.can_stop() {
            return Err(c.wrong_state("wait for StartContainer first"));
        }
        match st {
            State::Created => {
                c.set_state(State::Exited);
                let status = ExitStatus {
                    exit_code: 0,
                    reason: "NeverStarted".into(),
                    finished_boottime_ns: boottime_ns(),
                    ..Default::default()
                };
                c.exit.send_replace(Some(status.clone()));
                return Ok(status);
            }
            State::Exited => return self.wait(id).await,
            State::Starting | State::Running { .. } => {}
        }
        let sig = if signal == 0 { libc::SIGTERM } else { signal };
        let _ = self.kill(id, sig, false);
        if tokio::time::timeout(grace, self.wait(id)).await.is_err() {
            self.log.info(format!(
                "container {id} outlived its {grace:?} grace period: SIGKILL"
            ));
            let _ = c.cgroup.kill_all();
        }
        self.wait(id).await
    }
}
