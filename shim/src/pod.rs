//! The pod's VM as the shim holds it: its size, its boot, its teardown, and
//! every call the shim makes into it (containers, exec, stdio, stats).
//!
//! This file is the shim's one seam to `vpod_sandbox::Pod` and the pod's
//! agent: the rest of the shim sees shim types ([`Chunk`], [`ExecEvent`],
//! [`ExecControl`]) and shim errors, never the agent's protocol.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use vpod_agent_api::pb;
use vpod_sandbox::{ImageDisk, MountClassifier, Pod, PodConfig, VmSize};

use crate::config::ShimConfig;
use crate::error::{Error, Result};
use crate::io::{Chunk, Stdio};

/// Empty disk slots a CRI pod boots with (one per container created later).
const POD_SLOTS: usize = 4;
/// How long a pod's VM gets to power off at its last task's delete.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod id the sandbox crate accepts, from containerd's (64 hex) ids.
pub fn pod_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(32)
        .collect()
}

/// The pod VM's size. A sandbox boots before its containers are known: the
/// configured default. A lone container (`ctr run`) with a memory limit is
/// sized by its limits.
fn vm_size(cfg: &ShimConfig, spec: &oci_spec::runtime::Spec, sandbox: bool) -> Result<VmSize> {
    let default = VmSize {
        vcpus: cfg.default_vcpus,
        mem_mib: cfg.default_memory_mib,
    };
    if sandbox {
        return Ok(default);
    }
    let l = vpod_sandbox::Limits::from_spec(spec)?;
    Ok(match l.memory_bytes {
        Some(_) => VmSize::for_pod(
            &[l],
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        None => default,
    })
}

/// What booting the pod's VM takes.
#[derive(Debug)]
pub struct Boot<'a> {
    /// The task that boots it (the sandbox, or `ctr run`'s lone container).
    pub id: &'a str,
    /// That task's spec: its netns, hostname and (a lone container) limits.
    pub spec: &'a oci_spec::runtime::Spec,
    /// Whether the task is the sandbox (containers come later).
    pub sandbox: bool,
    /// Image disks it boots with (a lone container's own).
    pub images: Vec<ImageDisk>,
    /// The shim's config.
    pub config: &'a ShimConfig,
    /// The pod's state dir (slots, sockets, console).
    pub state_dir: PathBuf,
    /// The pod's ephemeral disk dir.
    pub ephemeral_dir: PathBuf,
}

/// The pod's VM: none until the first task boots it, none again after the
/// last task's delete.
#[derive(Debug, Default)]
pub struct PodSlot(tokio::sync::Mutex<Option<Arc<Pod>>>);

impl PodSlot {
    /// The running pod.
    pub async fn get(&self) -> Result<Arc<Pod>> {
        self.current().await.ok_or(Error::NoPod)
    }

    /// The running pod, if any.
    pub async fn current(&self) -> Option<Arc<Pod>> {
        self.0.lock().await.clone()
    }

    /// Boots the pod's VM as `b` says and keeps it.
    pub async fn boot(&self, b: Boot<'_>) -> Result<Arc<Pod>> {
        // A sandbox's containers come later, each into a free disk slot; a
        // lone container brings its image and keeps one slot spare.
        let slots = if b.sandbox { POD_SLOTS } else { 1 };
        // The netns CNI made (CRI's sandbox, `ctr run --with-ns network:`).
        let netns = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone());
        let t0 = std::time::Instant::now();
        let net = match netns {
            Some(p) => Some(vpod_sandbox::net::inspect(&p)?),
            None => None,
        };
        let net_ms = t0.elapsed();
        let cfg = b.config;
        let pid = pod_id(b.id);
        let size = vm_size(cfg, b.spec, b.sandbox)?;
        let hostname = b.spec.hostname().clone().filter(|h| !h.is_empty());
        let pod = Pod::boot(PodConfig {
            id: pid.clone(),
            dir: b.state_dir,
            ephemeral_dir: Some(b.ephemeral_dir),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            ephemeral_bytes: cfg.ephemeral_bytes(),
            images: b.images,
            spare_slots: slots,
            hostname: hostname.unwrap_or_else(|| pid.clone()),
            boot_timeout: vpod_sandbox::pod::DEFAULT_BOOT_TIMEOUT,
            net,
        })
        .await
        .map_err(Error::Boot)?;
        // Where a pod start's time goes (containerd's log carries it).
        log::info!(
            "pod {pid} booted in {:?}: network inspect {net_ms:?}, {:?}",
            t0.elapsed(),
            pod.boot_times
        );
        let pod = Arc::new(pod);
        *self.0.lock().await = Some(pod.clone());
        Ok(pod)
    }

    /// Takes the VM down: a clean poweroff if the shim holds the only
    /// reference, else (a volume watcher, a container's waiter still holds
    /// one) at once, since the shim may exit before the last holder lets go.
    pub async fn stop(&self) {
        let Some(pod) = self.0.lock().await.take() else {
            return;
        };
        match Arc::try_unwrap(pod) {
            Ok(p) => {
                p.shutdown(SHUTDOWN_TIMEOUT).await;
            }
            Err(arc) => arc.stop_now(),
        }
    }
}

/// Puts `image` into a free disk slot of the pod.
pub fn attach_image(pod: &Pod, image: &ImageDisk) -> Result<()> {
    pod.attach_image(image).map_err(Error::AttachImage)
}

/// Creates container `id` of `spec` on the disk `serial` (policy first:
/// what `classifier` lets it mount), and keeps the kubelet volumes it reads
/// up to date.
pub async fn create_container(
    pod: &Arc<Pod>,
    id: &str,
    spec: &oci_spec::runtime::Spec,
    serial: &str,
    classifier: &MountClassifier,
    stdin: bool,
) -> Result<()> {
    let watched = pod
        .create_container_oci(id, spec, serial, classifier, stdin)
        .await
        .map_err(Error::CreateContainer)?;
    if !watched.is_empty() {
        tokio::spawn(vpod_sandbox::volumes::watch(
            pod.clone(),
            watched,
            vpod_sandbox::volumes::DEFAULT_POLL,
            |v, r| {
                if let Err(e) = r {
                    log::warn!("volume {} update: {e}", v.name);
                }
            },
        ));
    }
    Ok(())
}

/// Starts container `id`.
pub async fn start_container(pod: &Pod, id: &str) -> Result<()> {
    pod.start_container(id)
        .await
        .map(drop)
        .map_err(Error::StartContainer)
}

/// Waits for container `id` to end: its exit status and whether it was
/// OOM-killed (a lost answer is 255, as a lost exec's).
pub async fn wait_container(pod: &Pod, id: &str) -> (u32, bool) {
    match pod.wait_container(id).await {
        Ok(s) => (s.exit_code as u32, s.oom_killed),
        Err(_) => (255, false),
    }
}

/// Removes container `id` (best effort: the VM may be gone).
pub async fn remove_container(pod: &Pod, id: &str) {
    let _ = pod.remove_container(id).await;
}

/// Sends `signal` to container `id` (`all`: every process in it).
pub async fn kill_container(pod: &Pod, id: &str, signal: i32, all: bool) -> Result<()> {
    pod.agent()
        .kill_container(pb::KillContainerRequest {
            id: id.to_owned(),
            signal,
            all,
        })
        .await
        .map(drop)
        .map_err(|s| Error::Agent(s.message().to_owned()))
}

/// Sets the TTY size of container `id`.
pub async fn resize_tty(pod: &Pod, id: &str, rows: u32, cols: u32) -> Result<()> {
    pod.agent()
        .resize_tty(pb::ResizeTtyRequest {
            id: id.to_owned(),
            rows,
            cols,
        })
        .await
        .map(drop)
        .map_err(|s| Error::Agent(s.message().to_owned()))
}

/// The guest's cgroup figures of container `id`.
pub async fn container_stats(pod: &Pod, id: &str) -> Result<pb::ContainerStatsResponse> {
    pod.agent()
        .container_stats(pb::ContainerRef { id: id.to_owned() })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Error::Agent(s.message().to_owned()))
}

/// New cgroup limits for container `id`.
pub async fn update_container(
    pod: &Pod,
    id: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<()> {
    pod.agent()
        .update_container(pb::UpdateContainerRequest {
            id: id.to_owned(),
            limits: Some(vpod_sandbox::oci::limits(Some(resources))),
        })
        .await
        .map(drop)
        .map_err(|s| Error::Agent(s.message().to_owned()))
}

/// Container `id`'s output, once the agent attaches to it. Holds no
/// reference to the pod: copying output never keeps the VM from a clean
/// shutdown.
pub fn attach(
    pod: &Pod,
    id: &str,
) -> impl std::future::Future<Output = Result<impl Stream<Item = Chunk> + Unpin + Send>> + Send + 'static
{
    let mut agent = pod.agent();
    let id = id.to_owned();
    async move {
        let out = agent
            .attach(pb::ContainerRef { id })
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?
            .into_inner();
        Ok(out.map_while(|c| {
            let c = c.ok()?;
            Some(if c.stream == pb::OutputStream::Stderr as i32 {
                Chunk::Stderr(c.data)
            } else {
                Chunk::Stdout(c.data)
            })
        }))
    }
}

/// Writes `chunks` to container `id`'s stdin until they end, which closes
/// it. The first chunk names the container; the stream's end closes its
/// stdin.
pub fn write_stdin(pod: &Pod, id: &str, chunks: mpsc::Receiver<Vec<u8>>) {
    let mut agent = pod.agent();
    let id = id.to_owned();
    let first = pb::StdinChunk {
        id: id.clone(),
        data: Vec::new(),
        close_on_end: true,
    };
    let stream =
        tokio_stream::once(first).chain(ReceiverStream::new(chunks).map(|data| pb::StdinChunk {
            id: String::new(),
            data,
            close_on_end: true,
        }));
    tokio::spawn(async move {
        if let Err(s) = agent.write_stdin(stream).await {
            log::warn!("stdin of {id}: {}", s.message());
        }
    });
}

/// What a running exec's output stream brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Some of its output.
    Output(Chunk),
    /// Its exit status: the last event.
    Exit(u32),
}

/// The input side of a running exec: stdin, signals, resizes. Every clone
/// keeps the exec's input open.
#[derive(Debug, Clone)]
pub struct ExecControl(mpsc::Sender<pb::ExecInput>);

impl ExecControl {
    async fn send(&self, input: pb::exec_input::Input) -> Result<()> {
        self.0
            .send(pb::ExecInput { input: Some(input) })
            .await
            .map_err(|_| Error::ExecNotRunning)
    }

    /// Sends `signal` to the exec's process (never its container).
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.send(pb::exec_input::Input::Signal(signal)).await
    }

    /// Sets the exec's TTY size.
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<()> {
        self.send(pb::exec_input::Input::Resize(pb::ExecResize { rows, cols }))
            .await
    }

    /// Writes to the exec's stdin.
    pub async fn stdin(&self, data: Vec<u8>) -> Result<()> {
        self.send(pb::exec_input::Input::Stdin(data)).await
    }

    /// Ends the exec's stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        self.send(pb::exec_input::Input::CloseStdin(true)).await
    }
}

/// Runs `process` in container `container_id` through the agent's Exec
/// stream: its input, and its output up to its exit.
pub async fn exec(
    pod: &Pod,
    container_id: &str,
    process: &oci_spec::runtime::Process,
    stdio: &Stdio,
) -> Result<(
    ExecControl,
    impl Stream<Item = ExecEvent> + Unpin + Send + 'static,
)> {
    let start = pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            container_id: container_id.to_owned(),
            process: Some(pb::Process {
                args: process.args().clone().unwrap_or_default(),
                env: process.env().clone().unwrap_or_default(),
                cwd: process.cwd().to_string_lossy().into_owned(),
                tty: stdio.terminal,
                stdin: stdio.has_stdin(),
                ..Default::default()
            }),
        })),
    };
    let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
    tx.send(start).await.map_err(|_| Error::ExecInputClosed)?;
    let out = pod
        .agent()
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::Agent(s.message().to_owned()))?
        .into_inner();
    let events = out.map_while(|r| r.ok()).filter_map(|m| {
        use pb::exec_output::Output;
        match m.output? {
            Output::Stdout(b) => Some(ExecEvent::Output(Chunk::Stdout(b))),
            Output::Stderr(b) => Some(ExecEvent::Output(Chunk::Stderr(b))),
            Output::Exit(x) => Some(ExecEvent::Exit(x.exit_code as u32)),
        }
    });
    Ok((ExecControl(tx), events))
}
