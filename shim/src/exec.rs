//! Exec'd processes: `ctr task exec` / CRI ExecSync in a running container,
//! through the agent's Exec stream, with containerd's FIFOs as their stdio.

use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use tokio_stream::StreamExt;
use vpod_sandbox::Pod;

use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::io::{self, Stdio};
use crate::pod::{self, ExecControl, ExecEvent};
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
        self.control()?.signal(signal).await
    }

    /// Sets the exec's TTY size.
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<()> {
        self.control()?.resize(rows, cols).await
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
    let (control, output) = pod::exec(pod, id, &exec.spec, &stdio).await?;
    if stdio.has_stdin() {
        let mut chunks = io::read_fifo(stdio.stdin.clone(), exec.process.stdin_closed());
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(b) = chunks.recv().await {
                if control.stdin(b).await.is_err() {
                    return;
                }
            }
            let _ = control.close_stdin().await;
        });
    }
    *exec.lock_control() = Some(control.clone());
    exec.process.set_running();
    let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
    tokio::spawn(async move {
        // The input stays open while the output is read.
        let _keep_input_open = control;
        let mut code = LOST_EXIT;
        let chunks = output.map_while(|e| match e {
            ExecEvent::Output(c) => Some(c),
            ExecEvent::Exit(c) => {
                code = c;
                None
            }
        });
        io::copy_output(&stdio, chunks).await;
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
