//! Exec'd processes: `ctr task exec` / CRI ExecSync in a running container,
//! through the agent's Exec stream, with containerd's FIFOs as their stdio.

use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use vpod_agent_api::pb;
use vpod_sandbox::{ExecControl, Pod};

use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::io::{self, Stdio};
use crate::process::Process;

/// What an exec whose output stream ends without an exit reports.
const LOST_EXIT: u32 = 255;

/// A process added to a running container.
#[derive(Debug)]
pub struct Exec {
    /// What to run: args, env, cwd.
    spec: oci_spec::runtime::Process,
    /// Its life as containerd sees it.
    pub process: Process,
    /// Its input while it runs: signals and resizes go there.
    control: Mutex<Option<ExecControl>>,
}

impl Exec {
    /// The exec containerd's Exec RPC asks for (not started yet).
    pub fn from_request(req: &api::ExecProcessRequest) -> Result<Exec> {
        let spec = serde_json::from_slice(&req.spec.value).map_err(Error::ExecSpec)?;
        Ok(Exec {
            spec,
            process: Process::new(Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
            control: Mutex::new(None),
        })
    }

    /// Sends `signal` to the exec's process (never to its container).
    pub async fn signal(&self, signal: i32) -> Result<()> {
        let control = self.control()?;
        control.signal(signal).await.map_err(gone)
    }

    /// Sets the exec's TTY size.
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<()> {
        let control = self.control()?;
        control.resize(rows, cols).await.map_err(gone)
    }

    /// What the agent runs: the spec's args, env and cwd, with the stdio
    /// containerd gave.
    fn agent_process(&self) -> pb::Process {
        let stdio = self.process.stdio();
        pb::Process {
            args: self.spec.args().clone().unwrap_or_default(),
            env: self.spec.env().clone().unwrap_or_default(),
            cwd: self.spec.cwd().to_string_lossy().into_owned(),
            tty: stdio.terminal,
            stdin: stdio.has_stdin(),
            ..Default::default()
        }
    }

    /// The running exec's input; one that has not started or has exited is
    /// [`Error::ExecNotRunning`] (what containerd expects of a gone process).
    fn control(&self) -> Result<ExecControl> {
        let control = self.lock_control().clone();
        if self.process.exit().is_some() {
            return Err(Error::ExecNotRunning);
        }
        control.ok_or(Error::ExecNotRunning)
    }

    fn lock_control(&self) -> std::sync::MutexGuard<'_, Option<ExecControl>> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An exec's input is gone only with its process (the only failure of
/// [`ExecControl`]): to containerd, a process that is not running.
fn gone(_: vpod_sandbox::PodError) -> Error {
    Error::ExecNotRunning
}

/// Starts `exec` as exec `exec_id` of container `id`: its stdin is copied
/// in, its output out, and its exit is recorded and published.
pub async fn start(
    pod: &Pod,
    id: &str,
    exec_id: &str,
    exec: Arc<Exec>,
    events: Arc<Publisher>,
) -> Result<()> {
    let stdio = exec.process.stdio().clone();
    let running = pod
        .exec(id, exec.agent_process())
        .await
        .map_err(Error::Agent)?;
    if stdio.has_stdin() {
        io::copy_stdin(
            stdio.stdin.clone(),
            exec.process.stdin_closed(),
            running.stdin(),
        );
    }
    *exec.lock_control() = Some(running.control());
    exec.process.set_running();
    let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
    tokio::spawn(async move {
        // The exec's input stays open while its output is copied.
        let (stdout, stderr) = io::output_fifos(&stdio);
        let code = match running.copy_to(stdout, stderr).await {
            Ok(Some(exit)) => exit.exit_code as u32,
            Ok(None) => LOST_EXIT,
            Err(e) => {
                log::debug!("{e}");
                LOST_EXIT
            }
        };
        exec.lock_control().take();
        let exit = exec.process.set_exited(code);
        events.publish(Event::exit(&id, &exec_id, &exit)).await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::types::task::Status;

    fn request(spec: &str) -> api::ExecProcessRequest {
        api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            stdout: "/fifo/out".into(),
            terminal: true,
            spec: Some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    value: spec.as_bytes().to_vec(),
                    ..Default::default()
                },
            )
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_exec_is_made_from_its_process_spec() {
        let e = Exec::from_request(&request(
            r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "true"]}"#,
        ))
        .unwrap();
        assert_eq!(
            e.spec.args().as_deref(),
            Some(&["sh", "-c", "true"].map(String::from)[..])
        );
        assert_eq!(e.process.status(), Status::CREATED);
        assert!(e.process.stdio().terminal);
        assert_eq!(e.process.stdio().stdout, "/fifo/out");
        assert!(matches!(
            Exec::from_request(&request("not json")),
            Err(Error::ExecSpec(_))
        ));
    }

    #[test]
    fn the_agent_runs_the_specs_process_with_containerds_stdio() {
        let mut req = request(
            r#"{"cwd": "/work", "user": {"uid": 0, "gid": 0}, "args": ["cat"], "env": ["A=1"]}"#,
        );
        req.stdin = "/fifo/in".into();
        let p = Exec::from_request(&req).unwrap().agent_process();
        assert_eq!(p.args, ["cat"]);
        assert_eq!(p.env, ["A=1"]);
        assert_eq!(p.cwd, "/work");
        assert!(p.tty && p.stdin);
        let p = Exec::from_request(&api::ExecProcessRequest {
            terminal: false,
            ..request(r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
        })
        .unwrap()
        .agent_process();
        assert!(p.args.is_empty() && !p.tty && !p.stdin);
    }

    #[tokio::test]
    async fn signals_to_an_exec_that_does_not_run_are_not_found() {
        let e =
            Exec::from_request(&request(r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}}"#)).unwrap();
        // Not started.
        assert!(matches!(e.signal(9).await, Err(Error::ExecNotRunning)));
        assert!(matches!(e.resize(24, 80).await, Err(Error::ExecNotRunning)));
        // Exited.
        e.process.set_exited(0);
        assert!(matches!(e.signal(9).await, Err(Error::ExecNotRunning)));
    }
}
