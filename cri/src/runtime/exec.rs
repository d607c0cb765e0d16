//! ExecSync: a command in a running container, its output gathered (bounded) and its exit
//! code returned, within the caller's timeout. Exec, Attach and PortForward answer with a
//! streaming URL in CRI; `vpod serve`'s streaming server is not built yet, so they say so.

use std::time::Duration;

use k8s_cri::v1 as cri;
use vpod_sandbox::OutputEvent;

use super::container::vm_of;
use super::Runtime;
use crate::error::{CriError, Result};

/// The most output an ExecSync returns per stream (kubelet's own cap, 16 MiB); the rest is
/// read and dropped so the process never blocks on it.
const MAX_OUTPUT: usize = 16 << 20;

impl Runtime {
    pub(super) async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse> {
        let (pod, c) = self.container(&req.container_id)?;
        if c.run().state != k8s_cri::v1::ContainerState::ContainerRunning {
            return Err(CriError::State(format!(
                "container {} is not running: nothing to exec in",
                c.id
            )));
        }
        if req.cmd.is_empty() {
            return Err(CriError::Invalid("ExecSync: an empty command (cmd)".into()));
        }
        let vm = vm_of(&pod).await?;
        // The agent runs it as the container's own process is (user, env, cwd, capabilities,
        // seccomp): only the command is the exec's.
        let process = vpod_agent_api::pb::Process {
            args: req.cmd.clone(),
            ..Default::default()
        };
        let (control, mut out) = vm.exec(&c.id, process).await?.into_parts();
        let input = control.clone();
        let run = async move {
            // The input stays open until the exit: its end would end the exec.
            let _open = input;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            loop {
                match out.next().await? {
                    Some(OutputEvent::Stdout(d)) => append(&mut stdout, &d),
                    Some(OutputEvent::Stderr(d)) => append(&mut stderr, &d),
                    Some(OutputEvent::Exit(x)) => return Ok((stdout, stderr, x.exit_code)),
                    None => {
                        return Err(CriError::State(format!(
                            "ExecSync in {}: the exec's stream ended without an exit",
                            c.id
                        )))
                    }
                }
            }
        };
        let (stdout, stderr, exit_code) = if req.timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(req.timeout as u64), run).await {
                Ok(r) => r?,
                Err(_) => {
                    // Its process goes too: a timed-out probe must not pile up in the guest.
                    let _ = control.signal(libc::SIGKILL).await;
                    return Err(CriError::Timeout(format!(
                        "ExecSync {:?} in {}: timed out after {} s",
                        req.cmd, req.container_id, req.timeout
                    )));
                }
            }
        } else {
            run.await?
        };
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        })
    }

    pub(super) fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse> {
        self.container(&req.container_id)?;
        Err(streaming("Exec"))
    }

    pub(super) fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse> {
        self.container(&req.container_id)?;
        Err(streaming("Attach"))
    }

    pub(super) fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse> {
        self.pod(&req.pod_sandbox_id)?;
        Err(streaming("PortForward"))
    }
}

fn streaming(call: &str) -> CriError {
    CriError::Unimplemented(format!(
        "{call}: vpod serve's streaming server (kubectl exec/attach/port-forward) is not built \
         yet; ExecSync works, and containerd with vpod's shim serves {call}"
    ))
}

fn append(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
