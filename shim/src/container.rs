//! A task of the shim: the pod's sandbox, or one container in the pod's VM.
//!
//! - The sandbox (CRI's pause container) is the VM itself and has no process
//!   in it: it "runs" from start to kill.
//! - Each other task is a container in the guest, created from its bundle's
//!   OCI spec through `vpod_sandbox::oci` (policy first), with its rootfs
//!   turned into a cached erofs disk (`rootfs.rs`) in a free slot.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api;
use vpod_sandbox::{ImageDisk, MountClassifier, Pod};

use crate::config::ShimConfig;
use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::io::{self, Stdio};
use crate::pod;
use crate::process::Process;
use crate::rootfs;

const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The CRI pause container: the pod's VM, no process of its own.
pub fn is_sandbox(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANN_CONTAINER_TYPE))
        .map(String::as_str)
        == Some("sandbox")
}

/// What the pod of `spec` may read on the host: its own kubelet volumes and
/// sandbox files (containerd's annotations); its namespaces are named by
/// this shim's pid.
pub fn classifier(cfg: &ShimConfig, spec: &oci_spec::runtime::Spec) -> MountClassifier {
    MountClassifier::new(&cfg.kubelet_root)
        .with_containerd_dirs(cfg.containerd_dirs.clone())
        .for_spec(spec)
        .with_pod_pid(std::process::id())
}

/// The container's rootfs (the snapshotter's `mounts`) as an image disk,
/// built into `cache` off the async threads, within the configured `limits`.
pub async fn rootfs_image(
    mounts: Vec<api::Mount>,
    cache: PathBuf,
    limits: vpod_images::UnpackLimits,
) -> Result<ImageDisk> {
    let disk = tokio::task::spawn_blocking(move || rootfs::disk_within(&mounts, &cache, &limits))
        .await??;
    Ok(ImageDisk {
        serial: disk.serial,
        path: disk.path,
    })
}

/// A task: the sandbox, or a container of the pod.
#[derive(Debug)]
pub struct Container {
    /// The task id (containerd's container id).
    pub id: String,
    /// Its bundle dir.
    pub bundle: String,
    /// The pause container: the VM itself, no process in the guest.
    sandbox: bool,
    /// Its process as containerd sees it.
    pub process: Process,
    /// The host file kubelet reads its termination message from (a checked mount source).
    termination_log: std::sync::OnceLock<PathBuf>,
}

impl Container {
    /// The task `req` creates (`sandbox`: it is the pod's pause container).
    pub fn new(req: &api::CreateTaskRequest, sandbox: bool) -> Container {
        Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            sandbox,
            process: Process::new(Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
            termination_log: std::sync::OnceLock::new(),
        }
    }

    /// Whether it is the sandbox.
    pub fn is_sandbox(&self) -> bool {
        self.sandbox
    }

    /// Creates the container in `pod` from `spec` on its image disk
    /// `serial`, and copies its output to containerd's FIFOs from then on.
    pub async fn create_in(
        &self,
        pod: &Arc<Pod>,
        spec: oci_spec::runtime::Spec,
        serial: &str,
        cfg: &ShimConfig,
    ) -> Result<()> {
        let mut spec = spec;
        if let Some(mut p) = spec.process().clone() {
            p.set_terminal(Some(self.process.stdio().terminal));
            spec.set_process(Some(p));
        }
        let stdin = self.process.stdio().has_stdin();
        let classifier = classifier(cfg, &spec);
        pod::create_container(pod, &self.id, &spec, serial, &classifier, stdin).await?;
        // The policy passed every mount: the termination log's source is this pod's file.
        if let Some(log) =
            spec.mounts()
                .iter()
                .flatten()
                .find_map(|m| match classifier.classify(m) {
                    Ok(vpod_sandbox::MountKind::RuntimeFile {
                        source,
                        termination_log: true,
                    }) => Some(source),
                    _ => None,
                })
        {
            let _ = self.termination_log.set(log);
        }
        // The agent's front, not the pod: copying output never keeps the VM
        // from a clean shutdown.
        let agent = pod.containers().clone();
        let (id, stdio) = (self.id.clone(), self.process.stdio().clone());
        tokio::spawn(async move {
            let output = match agent.attach(&id).await {
                Ok(output) => output,
                Err(e) => return log::warn!("attach to {id} failed: {e}"),
            };
            let (stdout, stderr) = io::output_fifos(&stdio);
            if let Err(e) = output.copy_to(stdout, stderr).await {
                // The VM went (a delete) or the agent's stream broke.
                log::debug!("{e}");
            }
        });
        Ok(())
    }
}

/// Starts container `c` in `pod`: its stdin is copied in (the guest opens
/// it at the start), and its exit (and an OOM kill) is recorded and
/// published when it comes.
pub async fn start(pod: Arc<Pod>, c: Arc<Container>, events: Arc<Publisher>) -> Result<()> {
    pod.start_container(&c.id)
        .await
        .map_err(Error::StartContainer)?;
    c.process.set_running();
    let stdio = c.process.stdio();
    if stdio.has_stdin() {
        io::copy_stdin(
            stdio.stdin.clone(),
            c.process.stdin_closed(),
            pod.stdin(&c.id),
        );
    }
    tokio::spawn(async move {
        // A lost answer is 255, as a lost exec's.
        let (code, oom) = match pod.wait_container(&c.id).await {
            Ok(s) => {
                // Before the exit is published: kubelet reads the file when it hears of it.
                if let Some(path) = c.termination_log.get() {
                    write_termination_message(path, &s.termination_message);
                }
                (s.exit_code as u32, s.oom_killed)
            }
            Err(_) => (255, false),
        };
        if oom {
            // kubelet reads OOMKilled from this event.
            events.publish(Event::oom(&c.id)).await;
        }
        let exit = c.process.set_exited(code);
        events.publish(Event::exit(&c.id, &c.id, &exit)).await;
    });
    Ok(())
}

/// Writes what the container left in its termination log to kubelet's host file (made by
/// kubelet: opened without creating and without following a symlink). Nothing written leaves it
/// as kubelet made it.
fn write_termination_message(path: &std::path::Path, message: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if message.is_empty() {
        return;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(message));
    if let Err(e) = written {
        log::warn!("termination message to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: &[(&str, &str)]) -> oci_spec::runtime::Spec {
        let mut s = oci_spec::runtime::Spec::default();
        s.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        s
    }

    #[test]
    fn the_pause_container_is_the_sandbox() {
        assert!(is_sandbox(&spec(&[(ANN_CONTAINER_TYPE, "sandbox")])));
        assert!(!is_sandbox(&spec(&[(ANN_CONTAINER_TYPE, "container")])));
        assert!(!is_sandbox(&spec(&[])));
    }

    #[test]
    fn a_task_keeps_its_request() {
        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: "/b".into(),
            stdin: "/fifo/in".into(),
            terminal: true,
            ..Default::default()
        };
        let c = Container::new(&req, false);
        assert_eq!((c.id.as_str(), c.bundle.as_str()), ("c1", "/b"));
        assert!(!c.is_sandbox());
        assert!(c.process.stdio().has_stdin() && c.process.stdio().terminal);
        assert!(Container::new(&req, true).is_sandbox());
    }
}
