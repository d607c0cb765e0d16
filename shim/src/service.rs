//! The shim v2 Task service: one shim process, one pod microVM.
//!
//! containerd starts one shim per pod (grouped by the CRI sandbox id), and
//! every container of the pod is a task of that shim:
//! - the sandbox (pause) task boots the VM and has no process in it;
//! - each other task is a container in the guest, created from its bundle's
//!   OCI spec through `vpod_sandbox::oci` (policy first) with its rootfs
//!   turned into a cached erofs disk (`rootfs.rs`) put into a free slot;
//! - a task without a sandbox (`ctr run`) boots its own VM.
//!
//! Output goes to containerd's FIFOs; exits and deletes are published as
//! task events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use vpod_agent_api::pb::{
    exec_input, ContainerRef, ExecInput, ExecResize, KillContainerRequest, OutputStream, StdinChunk,
};
use vpod_sandbox::{ImageDisk, MountClassifier, Pod, PodConfig};

use crate::config::ShimConfig;
use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::io::{self, Chunk, Stdio};
use crate::marker::{PodMarker, POD_MARKER};
use crate::process::Process;
use crate::rootfs;

/// Empty disk slots a CRI pod boots with (one per container created later).
const POD_SLOTS: usize = 4;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// A task: the sandbox, or a container of the pod.
struct TaskState {
    id: String,
    bundle: String,
    /// The pause container: the VM itself, no process in the guest.
    sandbox: bool,
    process: Process,
}

struct Inner {
    exit: Arc<ExitSignal>,
    namespace: String,
    events: Publisher,
    /// From the first Create's runtime options (one runtime per shim).
    config: std::sync::OnceLock<ShimConfig>,
    /// The pod's dirs, fixed by the first task (the one that boots the VM).
    marker: std::sync::OnceLock<PodMarker>,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    tasks: Mutex<HashMap<String, Arc<TaskState>>>,
    /// Exec'd processes by (container id, exec id).
    execs: Mutex<HashMap<(String, String), Arc<ExecState>>>,
}

/// A process `ctr task exec` / CRI ExecSync added to a running container.
struct ExecState {
    spec: oci_spec::runtime::Process,
    process: Process,
    /// The running exec's input stream: signals and resizes go there.
    input: Mutex<Option<tokio::sync::mpsc::Sender<ExecInput>>>,
}

impl ExecState {
    /// Sends `msg` to the running exec; an exec that has not started or
    /// has exited is NOT_FOUND (what containerd expects of a gone process).
    async fn send(&self, msg: ExecInput) -> Result<()> {
        let tx = self.input.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.process.exit().is_some() {
            return Err(Error::ExecNotRunning);
        }
        tx.ok_or(Error::ExecNotRunning)?
            .send(msg)
            .await
            .map_err(|_| Error::ExecNotRunning)
    }
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

/// The CRI pause container: the pod's VM, no process of its own.
fn is_sandbox(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANN_CONTAINER_TYPE))
        .map(String::as_str)
        == Some("sandbox")
}

/// The pod VM's size. A sandbox boots before its containers are known: the
/// configured default. A lone container (`ctr run`) with a memory limit is
/// sized by its limits.
fn vm_size(
    cfg: &ShimConfig,
    spec: &oci_spec::runtime::Spec,
    sandbox: bool,
) -> Result<vpod_sandbox::VmSize> {
    let default = vpod_sandbox::VmSize {
        vcpus: cfg.default_vcpus,
        mem_mib: cfg.default_memory_mib,
    };
    if sandbox {
        return Ok(default);
    }
    let l = vpod_sandbox::Limits::from_spec(spec)?;
    Ok(match l.memory_bytes {
        Some(_) => vpod_sandbox::VmSize::for_pod(
            &[l],
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        None => default,
    })
}

/// A pod id the sandbox crate accepts, from containerd's (64 hex) ids.
pub fn pod_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(32)
        .collect()
}

impl TaskService {
    /// The Task API of a shim that ends at `exit`, publishing events in
    /// `namespace` through `publisher`.
    pub fn new(exit: Arc<ExitSignal>, namespace: String, publisher: RemotePublisher) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                exit,
                namespace: namespace.clone(),
                events: Publisher::new(publisher, namespace),
                config: std::sync::OnceLock::new(),
                marker: std::sync::OnceLock::new(),
                pod: tokio::sync::Mutex::new(None),
                tasks: Mutex::new(HashMap::new()),
                execs: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn task(&self, id: &str) -> Result<Arc<TaskState>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::TaskNotFound(id.to_owned()))
    }

    fn exec_state(&self, id: &str, exec_id: &str) -> Result<Arc<ExecState>> {
        self.inner
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(id.to_owned(), exec_id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::ExecNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    /// Runs exec `exec_id` in container `id` through the agent's Exec stream,
    /// with containerd's FIFOs as its stdio.
    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        use vpod_agent_api::pb::{exec_input, exec_output, ExecStart, Process};
        let e = self.exec_state(id, exec_id)?;
        let pod = self.pod().await?;
        let p = &e.spec;
        let stdio = e.process.stdio();
        let start = ExecInput {
            input: Some(exec_input::Input::Start(ExecStart {
                container_id: id.to_owned(),
                process: Some(Process {
                    args: p.args().clone().unwrap_or_default(),
                    env: p.env().clone().unwrap_or_default(),
                    cwd: p.cwd().to_string_lossy().into_owned(),
                    tty: stdio.terminal,
                    stdin: stdio.has_stdin(),
                    ..Default::default()
                }),
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
        tx.send(start).await.map_err(|_| Error::ExecInputClosed)?;
        let out = pod
            .agent()
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?
            .into_inner();
        if stdio.has_stdin() {
            let mut chunks = io::read_fifo(stdio.stdin.clone(), e.process.stdin_closed());
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(b) = chunks.recv().await {
                    let msg = ExecInput {
                        input: Some(exec_input::Input::Stdin(b)),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(ExecInput {
                        input: Some(exec_input::Input::CloseStdin(true)),
                    })
                    .await;
            });
        }
        *e.input.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        e.process.set_running();
        let this = self.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            let _keep_input_open = tx;
            let mut code = 255;
            let chunks = tokio_stream::StreamExt::map_while(out, |m| match m.ok()?.output {
                Some(exec_output::Output::Stdout(b)) => Some(Some(Chunk::Stdout(b))),
                Some(exec_output::Output::Stderr(b)) => Some(Some(Chunk::Stderr(b))),
                Some(exec_output::Output::Exit(x)) => {
                    code = x.exit_code as u32;
                    None
                }
                None => Some(None),
            });
            io::copy_output(
                e.process.stdio(),
                tokio_stream::StreamExt::filter_map(chunks, |c| c),
            )
            .await;
            e.input.lock().unwrap_or_else(|p| p.into_inner()).take();
            let exit = e.process.set_exited(code);
            this.inner
                .events
                .publish(Event::exit(&id, &exec_id, &exit))
                .await;
        });
        Ok(())
    }

    fn config(&self) -> Result<&ShimConfig> {
        self.inner.config.get().ok_or(Error::NoConfig)
    }

    /// The pod's dirs: those of the first task (`id`) to ask.
    fn marker(&self, id: &str) -> Result<&PodMarker> {
        let cfg = self.config()?;
        Ok(self
            .inner
            .marker
            .get_or_init(|| PodMarker::for_pod(cfg, &self.inner.namespace, id)))
    }

    /// What the pod of `spec` may read on the host: its own kubelet volumes and sandbox files
    /// (containerd's annotations); its namespaces are named by this shim's pid.
    fn classifier(&self, spec: &oci_spec::runtime::Spec) -> Result<MountClassifier> {
        let cfg = self.config()?;
        Ok(MountClassifier::new(&cfg.kubelet_root)
            .with_containerd_dirs(cfg.containerd_dirs.clone())
            .for_spec(spec)
            .with_pod_pid(std::process::id()))
    }

    async fn pod(&self) -> Result<Arc<Pod>> {
        self.inner.pod.lock().await.clone().ok_or(Error::NoPod)
    }

    async fn boot(
        &self,
        id: &str,
        images: Vec<ImageDisk>,
        sandbox: bool,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<Arc<Pod>> {
        // A sandbox's containers come later, each into a free disk slot; a
        // lone container brings its image and keeps one slot spare.
        let slots = if sandbox { POD_SLOTS } else { 1 };
        // The netns CNI made (CRI's sandbox, `ctr run --with-ns network:`).
        let netns = spec
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
        let cfg = self.config()?;
        let pid = pod_id(id);
        let size = vm_size(cfg, spec, sandbox)?;
        let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        let dirs = self.marker(id)?;
        let pod = Pod::boot(PodConfig {
            id: pid.clone(),
            dir: dirs.state_dir.clone(),
            ephemeral_dir: Some(dirs.ephemeral_dir.clone()),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            ephemeral_bytes: cfg.ephemeral_bytes(),
            images,
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
        *self.inner.pod.lock().await = Some(pod.clone());
        Ok(pod)
    }

    /// Copies containerd's stdin FIFO into the container until CloseIO.
    fn forward_stdin(&self, pod: &Arc<Pod>, t: &Arc<TaskState>) {
        use tokio_stream::StreamExt;
        let mut agent = pod.agent();
        let chunks = io::read_fifo(t.process.stdio().stdin.clone(), t.process.stdin_closed());
        let id = t.id.clone();
        // The first chunk names the container; the stream's end (CloseIO)
        // closes its stdin.
        let first = StdinChunk {
            id: id.clone(),
            data: Vec::new(),
            close_on_end: true,
        };
        let stream = tokio_stream::once(first).chain(
            tokio_stream::wrappers::ReceiverStream::new(chunks).map(|data| StdinChunk {
                id: String::new(),
                data,
                close_on_end: true,
            }),
        );
        tokio::spawn(async move {
            if let Err(s) = agent.write_stdin(stream).await {
                log::warn!("stdin of {id}: {}", s.message());
            }
        });
    }

    /// Copies the container's output to containerd's FIFOs.
    fn forward_output(&self, pod: &Arc<Pod>, t: &Arc<TaskState>) {
        let mut agent = pod.agent();
        let id = t.id.clone();
        let stdio = t.process.stdio().clone();
        tokio::spawn(async move {
            let Ok(resp) = agent.attach(ContainerRef { id: id.clone() }).await else {
                log::warn!("attach to {id} failed");
                return;
            };
            let chunks = tokio_stream::StreamExt::map_while(resp.into_inner(), |c| {
                let c = c.ok()?;
                Some(if c.stream == OutputStream::Stderr as i32 {
                    Chunk::Stderr(c.data)
                } else {
                    Chunk::Stdout(c.data)
                })
            });
            io::copy_output(&stdio, chunks).await;
        });
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(|source| {
            Error::Spec {
                bundle: req.bundle.clone(),
                source,
            }
        })?;
        let sandbox = is_sandbox(&spec);
        if self.inner.config.get().is_none() {
            let (type_url, value) = req
                .options
                .as_ref()
                .map(|o| (o.type_url.as_str(), o.value.as_slice()))
                .unwrap_or_default();
            let c = ShimConfig::resolve(type_url, value).map_err(Error::from)?;
            let _ = self.inner.config.set(c);
        }
        // Before anything is made: a crash from here on is cleaned up by `delete`.
        self.marker(&req.id)?
            .write(&bundle)
            .map_err(|source| Error::Marker {
                path: bundle.join(POD_MARKER),
                source,
            })?;
        let t = Arc::new(TaskState {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            sandbox,
            process: Process::new(Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
        });

        if sandbox {
            // Policy of the pod as a whole (host namespaces) before booting.
            vpod_sandbox::check_spec(&spec, &self.classifier(&spec)?).map_err(Error::from)?;
            self.boot(&req.id, Vec::new(), true, &spec).await?;
        } else {
            let cache = self.config()?.rootfs_cache.clone();
            let mounts = req.rootfs.clone();
            let disk = tokio::task::spawn_blocking(move || rootfs::disk(&mounts, &cache))
                .await
                .map_err(Error::from)?
                .map_err(Error::from)?;
            let image = ImageDisk {
                serial: disk.serial.clone(),
                path: disk.path.clone(),
            };
            let existing = self.inner.pod.lock().await.clone();
            let pod = match existing {
                Some(pod) => {
                    pod.attach_image(&image).map_err(Error::AttachImage)?;
                    pod
                }
                // No sandbox task (`ctr run`): this container's own VM.
                None => self.boot(&req.id, vec![image], false, &spec).await?,
            };
            let mut spec = spec;
            if let Some(p) = spec.process().clone() {
                let mut p = p;
                p.set_terminal(Some(req.terminal));
                spec.set_process(Some(p));
            }
            let watched = pod
                .create_container_oci(
                    &req.id,
                    &spec,
                    &disk.serial,
                    &self.classifier(&spec)?,
                    !req.stdin.is_empty(),
                )
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
            self.forward_output(&pod, &t);
        }
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req.id.clone(), t);
        self.inner.events.publish(Event::create(&req)).await;
        Ok(api::CreateTaskResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            self.start_exec(&req.id, &req.exec_id).await?;
            self.inner
                .events
                .publish(Event::exec_started(&req.id, &req.exec_id))
                .await;
            return Ok(api::StartResponse {
                pid: std::process::id(),
                ..Default::default()
            });
        }
        let t = self.task(&req.id)?;
        if !t.sandbox {
            let pod = self.pod().await?;
            pod.start_container(&t.id)
                .await
                .map_err(Error::StartContainer)?;
            // The guest opens the container's stdin when it starts it.
            if t.process.stdio().has_stdin() {
                self.forward_stdin(&pod, &t);
            }
            let this = self.clone();
            let t2 = t.clone();
            tokio::spawn(async move {
                let (code, oom) = match pod.wait_container(&t2.id).await {
                    Ok(s) => (s.exit_code as u32, s.oom_killed),
                    Err(_) => (255, false),
                };
                if oom {
                    // kubelet reads OOMKilled from this event.
                    this.inner.events.publish(Event::oom(&t2.id)).await;
                }
                let exit = t2.process.set_exited(code);
                this.inner
                    .events
                    .publish(Event::exit(&t2.id, &t2.id, &exit))
                    .await;
            });
        }
        t.process.set_running();
        self.inner.events.publish(Event::start(&t.id)).await;
        Ok(api::StartResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            // An exec's own process, never its container.
            let e = self.exec_state(&req.id, &req.exec_id)?;
            e.send(ExecInput {
                input: Some(exec_input::Input::Signal(req.signal as i32)),
            })
            .await?;
            return Ok(api::Empty::default());
        }
        let t = self.task(&req.id)?;
        if !t.process.is_running() {
            return Ok(api::Empty::default());
        }
        if t.sandbox {
            t.process.set_exited(128 + req.signal);
            return Ok(api::Empty::default());
        }
        let pod = self.pod().await?;
        pod.agent()
            .kill_container(KillContainerRequest {
                id: t.id.clone(),
                signal: req.signal as i32,
                all: req.all,
            })
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?;
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let exit = if req.exec_id.is_empty() {
            self.task(&req.id)?.process.watch_exit()
        } else {
            self.exec_state(&req.id, &req.exec_id)?.process.watch_exit()
        };
        let e = exit.wait().await?;
        Ok(api::WaitResponse {
            exit_status: e.code,
            exited_at: Some(e.at).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let e = self.exec_state(&req.id, &req.exec_id)?;
            self.inner
                .execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(req.id.clone(), req.exec_id.clone()));
            let x = e.process.exit_or_now();
            return Ok(api::DeleteResponse {
                pid: std::process::id(),
                exit_status: x.code,
                exited_at: Some(x.at).into(),
                ..Default::default()
            });
        }
        let t = self.task(&req.id)?;
        if !t.sandbox {
            if let Ok(pod) = self.pod().await {
                let _ = pod.remove_container(&t.id).await;
            }
        }
        let remaining = {
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.remove(&req.id);
            tasks.len()
        };
        // The last task (the sandbox, or `ctr run`'s one) takes the VM with it.
        if t.sandbox || remaining == 0 {
            if let Some(pod) = self.inner.pod.lock().await.take() {
                match Arc::try_unwrap(pod) {
                    Ok(p) => {
                        p.shutdown(SHUTDOWN_TIMEOUT).await;
                    }
                    // Still held (a volume watcher): stop it anyway; the
                    // shim may exit before the last holder lets go.
                    Err(arc) => arc.stop_now(),
                }
            }
        }
        let e = t.process.exit_or_now();
        self.inner.events.publish(Event::delete(&t.id, &e)).await;
        Ok(api::DeleteResponse {
            pid: std::process::id(),
            exit_status: e.code,
            exited_at: Some(e.at).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        if !req.exec_id.is_empty() {
            let e = self.exec_state(&req.id, &req.exec_id)?;
            return Ok(api::StateResponse {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..e.process.state()
            });
        }
        let t = self.task(&req.id)?;
        Ok(api::StateResponse {
            id: t.id.clone(),
            bundle: t.bundle.clone(),
            ..t.process.state()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.task(&req.id)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim_protos::types::task::ProcessInfo {
                pid: std::process::id(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        if t.sandbox || !t.process.is_running() {
            return Err(Error::NotRunningContainer(req.id.clone()).into());
        }
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(Error::ExecSpec)?;
        let e = Arc::new(ExecState {
            spec: process,
            process: Process::new(Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
            input: Mutex::new(None),
        });
        let key = (req.id.clone(), req.exec_id.clone());
        {
            let mut execs = self.inner.execs.lock().unwrap_or_else(|p| p.into_inner());
            if execs.contains_key(&key) {
                return Err(Error::ExecExists(req.exec_id.clone()).into());
            }
            execs.insert(key, e);
        }
        self.inner
            .events
            .publish(Event::exec_added(&req.id, &req.exec_id))
            .await;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim_protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        let t = self.task(&req.id)?;
        if t.sandbox {
            return Ok(api::StatsResponse::default());
        }
        let s = self
            .pod()
            .await?
            .agent()
            .container_stats(ContainerRef { id: t.id.clone() })
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?
            .into_inner();
        // The guest's cgroup v2 figures in the v1 shape containerd decodes.
        let m = Metrics {
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu_usage_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: s.memory_bytes,
                    max: s.memory_peak_bytes,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStat {
                current: s.pids as u64,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(m)).map_err(Error::Stats)?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            let e = self.exec_state(&req.id, &req.exec_id)?;
            e.send(ExecInput {
                input: Some(exec_input::Input::Resize(ExecResize {
                    rows: req.height,
                    cols: req.width,
                })),
            })
            .await?;
            return Ok(api::Empty::default());
        }
        let t = self.task(&req.id)?;
        self.pod()
            .await?
            .agent()
            .resize_tty(vpod_agent_api::pb::ResizeTtyRequest {
                id: t.id.clone(),
                rows: req.height,
                cols: req.width,
            })
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::default());
        }
        if req.exec_id.is_empty() {
            self.task(&req.id)?.process.close_stdin();
        } else {
            self.exec_state(&req.id, &req.exec_id)?
                .process
                .close_stdin();
        }
        Ok(api::Empty::default())
    }

    /// New cgroup limits for a running container (kubelet's
    /// UpdateContainerResources). The VM's own size does not change: limits
    /// beyond it are capped by the guest's memory and vCPUs.
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        if t.sandbox {
            // The pod's VM: its size is fixed at boot.
            return Ok(api::Empty::default());
        }
        let resources: oci_spec::runtime::LinuxResources = req
            .resources
            .as_ref()
            .map(|r| serde_json::from_slice(&r.value))
            .transpose()
            .map_err(|source| Error::Resources {
                id: req.id.clone(),
                source,
            })?
            .unwrap_or_default();
        self.pod()
            .await?
            .agent()
            .update_container(vpod_agent_api::pb::UpdateContainerRequest {
                id: t.id.clone(),
                limits: Some(vpod_sandbox::oci::limits(Some(&resources))),
            })
            .await
            .map_err(|s| Error::Agent(s.message().to_owned()))?;
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unsupported("pause").into())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(Error::Unsupported("resume").into())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(Error::Unsupported("checkpoint").into())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let empty = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if empty {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
