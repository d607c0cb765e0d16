//! StartContainer: the container's init in new namespaces, its output
//! flowing, and a waiter that records its exit.

use std::sync::Arc;

use vpod_agent_api::pb::{OutputChunk, OutputStream};

use super::containers::Containers;
use super::error::ContainerError;
use super::init::config::{InitConfig, Namespaces, ProcessConfig, RootConfig};
use super::pipe;
use super::state::State;
use super::stdio::{self, Stdio};
use super::wait::exit_status;

impl Containers {
    /// Starts the container's process; returns its pid.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<i32, ContainerError> {
        let c = self.get(id)?;
        c.begin_start()?;
        let p = c.req.process.clone().unwrap_or_default();
        let stdio = match Stdio::new(
            p.tty,
            p.stdin,
            p.tty_rows as u16,
            p.tty_cols as u16,
            Some(&c.pts()),
        ) {
            Ok(s) => s,
            Err(e) => {
                c.set_state(State::Created);
                return Err(c.io("make stdio")(e));
            }
        };
        let privileged = c.req.privileged;
        let holder = match self.pod_ns_holder(id) {
            Ok(h) => h,
            Err(e) => {
                c.set_state(State::Created);
                return Err(e);
            }
        };
        let cfg = InitConfig {
            namespaces: Namespaces::New(RootConfig {
                rootfs: c.rootfs.clone(),
                pts: c.pts(),
                hostname: c.req.hostname.clone(),
                mounts: c.mounts.clone(),
                masked_paths: c.req.masked_paths.clone(),
                readonly_paths: c.req.readonly_paths.clone(),
                read_only_rootfs: c.req.read_only_rootfs,
                shm_size_bytes: c.req.shm_size_bytes,
                privileged,
                pod_ns_holder: Some(holder),
                share_pid: c.req.share_pid_namespace,
                sysctls: c
                    .req
                    .sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            process: ProcessConfig::new(&p, &p, privileged, &c.seccomp),
        };
        let Stdio {
            child,
            ends:
                stdio::Ends {
                    out,
                    err,
                    input,
                    pty,
                },
        } = stdio;
        let mut spawned = match pipe::spawn(&self.reaper, &cfg, child, &c.cgroup.procs_file()) {
            Ok(s) => s,
            Err(e) => {
                c.set_state(State::Created);
                return Err(c.io("spawn the container init")(e));
            }
        };
        let started = spawned.started().await;

        // The output flows whether or not the process started (a start
        // error may have printed something).
        let tx = c.output_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let t = tx.clone();
            tokio::spawn(stdio::pump(out, t, |data| OutputChunk {
                stream: OutputStream::Stdout as i32,
                data,
            }));
            if let Some(err) = err {
                tokio::spawn(stdio::pump(err, tx, |data| OutputChunk {
                    stream: OutputStream::Stderr as i32,
                    data,
                }));
            }
        }
        *c.stdin.lock().await = input;
        *c.pty.lock().unwrap_or_else(|p| p.into_inner()) = pty;

        let waiter = {
            let c = c.clone();
            let log = self.log.clone();
            async move {
                let status = spawned.finish().await;
                let oom = c.cgroup.oom_kills() > 0;
                let mut exit = exit_status(status, oom);
                exit.termination_message = c.termination_message();
                // The namespace's init is gone, so is everything in it; make
                // sure of it for processes that left the PID namespace.
                let _ = c.cgroup.kill_all();
                log.info(format!(
                    "container {} exited: code {} ({})",
                    c.id, exit.exit_code, exit.reason
                ));
                c.set_state(State::Exited);
                c.exit.send_replace(Some(exit));
            }
        };
        match started {
            Ok(pid) => {
                c.set_state(State::Running { pid });
                tokio::spawn(waiter);
                self.log.info(format!("container {id} started, pid {pid}"));
                Ok(pid)
            }
            Err(msg) => {
                waiter.await;
                c.exit.send_modify(|e| {
                    if let Some(e) = e {
                        e.reason = "StartError".into();
                    }
                });
                Err(ContainerError::Start {
                    id: id.to_owned(),
                    msg,
                })
            }
        }
    }
}
