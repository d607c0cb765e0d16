//! ExecSync / Exec: a process joining a running container's namespaces and
//! cgroup, with its own stdio.

use std::sync::Arc;

use vpod_agent_api::pb::{ExitStatus, Process};

use super::containers::Containers;
use super::error::ContainerError;
use super::init::config::{InitConfig, Namespaces, ProcessConfig};
use super::pipe::{self, Spawned};
use super::state::State;
use super::stdio::{self, Stdio};
use super::wait::exit_status;

impl Containers {
    /// Starts a process in a running container: its stdio, and a handle
    /// that resolves to its exit status.
    pub async fn exec(
        self: &Arc<Self>,
        id: &str,
        p: &Process,
    ) -> Result<(ExecHandle, stdio::Ends), ContainerError> {
        let c = self.get(id)?;
        let pid = c.pid_if(State::can_exec, "exec needs a running container")?;
        if p.args.is_empty() {
            return Err(ContainerError::Invalid {
                id: id.to_owned(),
                msg: "exec: no command".into(),
            });
        }
        let base = c.req.process.clone().unwrap_or_default();
        let mut proc_cfg = ProcessConfig::new(&base, p, c.req.privileged, &c.seccomp);
        proc_cfg.env = base.env.clone();
        proc_cfg.env.extend(p.env.iter().cloned());
        let stdio = Stdio::new(
            p.tty,
            p.stdin,
            p.tty_rows as u16,
            p.tty_cols as u16,
            Some(&c.pts()),
        )
        .map_err(c.io("make exec stdio"))?;
        let cfg = InitConfig {
            namespaces: Namespaces::Join { pid },
            process: proc_cfg,
        };
        let Stdio { child, ends } = stdio;
        let mut spawned = pipe::spawn(&self.reaper, &cfg, child, &c.cgroup.procs_file())
            .map_err(c.io("spawn exec"))?;
        let pid = match spawned.started().await {
            Ok(pid) => pid,
            Err(msg) => {
                let _ = spawned.finish().await;
                return Err(ContainerError::Start {
                    id: id.to_owned(),
                    msg: format!("exec: {msg}"),
                });
            }
        };
        Ok((ExecHandle { spawned, pid }, ends))
    }
}

/// A started exec: its pid, and its exit to wait for.
#[derive(Debug)]
pub struct ExecHandle {
    spawned: Spawned,
    /// The exec'd process (guest pid namespace).
    pid: i32,
}

impl ExecHandle {
    /// The exec'd process (guest pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its exit status, once it exits.
    pub async fn wait(self) -> ExitStatus {
        exit_status(self.spawned.finish().await, false)
    }
}
