//! The shim v2 Task service: containerd's Task RPCs for the one pod of this
//! shim.
//!
//! containerd starts one shim per pod (grouped by the CRI sandbox id), and
//! every container of the pod is a task of that shim (`container.rs`): the
//! sandbox task boots the pod's VM (`pod.rs`); a task without a sandbox
//! (`ctr run`) boots its own. Execs (`exec.rs`) are processes added to a
//! running container. Output goes to containerd's FIFOs (`io.rs`); exits and
//! deletes are published as task events (`events.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use vpod_sandbox::{ImageDisk, Pod};

use crate::config::ShimConfig;
use crate::container::{self, Container};
use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::exec::{self, Exec};
use crate::marker::{PodMarker, POD_MARKER};
use crate::pod::{Boot, PodSlot};
use crate::process::Exit;
use crate::stats;

/// What every clone of the service shares.
struct Inner {
    exit: Arc<ExitSignal>,
    namespace: String,
    events: Arc<Publisher>,
    /// From the first Create's runtime options (one runtime per shim).
    config: OnceLock<ShimConfig>,
    /// The pod's dirs, fixed by the first task (the one that boots the VM).
    marker: OnceLock<PodMarker>,
    pod: PodSlot,
    tasks: Mutex<HashMap<String, Arc<Container>>>,
    /// Exec'd processes by (container id, exec id).
    execs: Mutex<HashMap<(String, String), Arc<Exec>>>,
}

/// containerd's Task API of the shim.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.inner.namespace)
            .field("pod", &self.inner.pod)
            .finish_non_exhaustive()
    }
}

/// containerd's answer to a Delete of a process that ended with `exit`.
fn deleted(exit: Exit) -> api::DeleteResponse {
    api::DeleteResponse {
        pid: std::process::id(),
        exit_status: exit.code,
        exited_at: Some(exit.at).into(),
        ..Default::default()
    }
}

impl TaskService {
    /// The Task API of a shim that ends at `exit`, publishing events in
    /// `namespace` through `publisher`.
    pub fn new(exit: Arc<ExitSignal>, namespace: String, publisher: RemotePublisher) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                exit,
                namespace: namespace.clone(),
                events: Arc::new(Publisher::new(publisher, namespace)),
                config: OnceLock::new(),
                marker: OnceLock::new(),
                pod: PodSlot::default(),
                tasks: Mutex::new(HashMap::new()),
                execs: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Exec>>> {
        self.inner.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task(&self, id: &str) -> Result<Arc<Container>> {
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::TaskNotFound(id.to_owned()))
    }

    fn exec(&self, id: &str, exec_id: &str) -> Result<Arc<Exec>> {
        self.execs()
            .get(&(id.to_owned(), exec_id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::ExecNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
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

    async fn pod(&self) -> Result<Arc<Pod>> {
        self.inner.pod.get().await
    }

    /// Boots the pod's VM for task `id` of `spec`.
    async fn boot(
        &self,
        id: &str,
        images: Vec<ImageDisk>,
        sandbox: bool,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<Arc<Pod>> {
        let dirs = self.marker(id)?;
        let boot = Boot {
            id,
            spec,
            sandbox,
            images,
            config: self.config()?,
            state_dir: dirs.state_dir.clone(),
            ephemeral_dir: dirs.ephemeral_dir.clone(),
        };
        self.inner.pod.boot(boot).await
    }

    /// Create's work: the marker, then the pod (booted by a sandbox or a
    /// lone container) and the container in it.
    async fn create_task(&self, req: &api::CreateTaskRequest) -> Result<()> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(|source| {
            Error::Spec {
                bundle: req.bundle.clone(),
                source,
            }
        })?;
        let sandbox = container::is_sandbox(&spec);
        if self.inner.config.get().is_none() {
            let (type_url, value) = req
                .options
                .as_ref()
                .map(|o| (o.type_url.as_str(), o.value.as_slice()))
                .unwrap_or_default();
            let _ = self.inner.config.set(ShimConfig::resolve(type_url, value)?);
        }
        // Before anything is made: a crash from here on is cleaned up by `delete`.
        self.marker(&req.id)?
            .write(&bundle)
            .map_err(|source| Error::Marker {
                path: bundle.join(POD_MARKER),
                source,
            })?;
        let c = Arc::new(Container::new(req, sandbox));
        if sandbox {
            // Policy of the pod as a whole (host namespaces) before booting.
            vpod_sandbox::check_spec(&spec, &container::classifier(self.config()?, &spec))?;
            self.boot(&req.id, Vec::new(), true, &spec).await?;
        } else {
            let cfg = self.config()?;
            let (cache, limits) = (cfg.rootfs_cache.clone(), cfg.unpack_limits());
            let image = container::rootfs_image(req.rootfs.clone(), cache, limits).await?;
            let pod = match self.inner.pod.current().await {
                Some(pod) => {
                    pod.attach_image(&image).map_err(Error::AttachImage)?;
                    pod
                }
                // No sandbox task (`ctr run`): this container's own VM.
                None => {
                    self.boot(&req.id, vec![image.clone()], false, &spec)
                        .await?
                }
            };
            c.create_in(&pod, spec, &image.serial, self.config()?)
                .await?;
        }
        self.tasks().insert(req.id.clone(), c);
        Ok(())
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        self.create_task(&req).await?;
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
            let e = self.exec(&req.id, &req.exec_id)?;
            let pod = self.pod().await?;
            exec::start(&pod, &req.id, &req.exec_id, e, self.inner.events.clone()).await?;
            self.inner
                .events
                .publish(Event::exec_started(&req.id, &req.exec_id))
                .await;
            return Ok(api::StartResponse {
                pid: std::process::id(),
                ..Default::default()
            });
        }
        let c = self.task(&req.id)?;
        if c.is_sandbox() {
            c.process.set_running();
        } else {
            let pod = self.pod().await?;
            container::start(pod, c.clone(), self.inner.events.clone()).await?;
        }
        self.inner.events.publish(Event::start(&c.id)).await;
        Ok(api::StartResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            // An exec's own process, never its container.
            self.exec(&req.id, &req.exec_id)?
                .signal(req.signal as i32)
                .await?;
            return Ok(api::Empty::default());
        }
        let c = self.task(&req.id)?;
        let finished = || Error::AlreadyFinished(format!("container {}", c.id));
        if !c.process.is_running() {
            return Err(finished().into());
        }
        if c.is_sandbox() {
            c.process.set_exited(128 + req.signal);
            return Ok(api::Empty::default());
        }
        let pod = self.pod().await?;
        match pod.kill_container(&c.id, req.signal as i32, req.all).await {
            Ok(()) => Ok(api::Empty::default()),
            // The process exited in the guest and its exit is on its way here.
            Err(e) if e.is_not_found() => Err(finished().into()),
            Err(e) => Err(Error::Agent(e).into()),
        }
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        // The wait holds no reference to the process: its delete ends it.
        let exit = if req.exec_id.is_empty() {
            self.task(&req.id)?.process.watch_exit()
        } else {
            self.exec(&req.id, &req.exec_id)?.process.watch_exit()
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
            let e = self.exec(&req.id, &req.exec_id)?;
            self.execs().remove(&(req.id.clone(), req.exec_id.clone()));
            return Ok(deleted(e.process.exit_or_now()));
        }
        let c = self.task(&req.id)?;
        if !c.is_sandbox() {
            if let Some(pod) = self.inner.pod.current().await {
                // Best effort: the VM may be gone.
                let _ = pod.remove_container(&c.id).await;
            }
        }
        let remaining = {
            let mut tasks = self.tasks();
            tasks.remove(&req.id);
            tasks.len()
        };
        // The last task (the sandbox, or `ctr run`'s one) takes the VM with it.
        if c.is_sandbox() || remaining == 0 {
            self.inner.pod.stop().await;
        }
        let e = c.process.exit_or_now();
        self.inner.events.publish(Event::delete(&c.id, &e)).await;
        Ok(deleted(e))
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        if !req.exec_id.is_empty() {
            let e = self.exec(&req.id, &req.exec_id)?;
            return Ok(api::StateResponse {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..e.process.state()
            });
        }
        let c = self.task(&req.id)?;
        Ok(api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            ..c.process.state()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let c = self.task(&req.id)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim_protos::types::task::ProcessInfo {
                pid: c.process.pid(),
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
        let c = self.task(&req.id)?;
        if c.is_sandbox() || !c.process.is_running() {
            return Err(Error::NotRunningContainer(req.id.clone()).into());
        }
        let e = Arc::new(Exec::from_request(&req)?);
        {
            let mut execs = self.execs();
            let key = (req.id.clone(), req.exec_id.clone());
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
        let c = self.task(&req.id)?;
        if c.is_sandbox() {
            return Ok(api::StatsResponse::default());
        }
        let pod = self.pod().await?;
        let s = pod.container_stats(&c.id).await.map_err(Error::Agent)?;
        Ok(stats::response(&s)?)
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        if !req.exec_id.is_empty() {
            self.exec(&req.id, &req.exec_id)?
                .resize(req.height, req.width)
                .await?;
            return Ok(api::Empty::default());
        }
        let c = self.task(&req.id)?;
        let pod = self.pod().await?;
        pod.resize_tty(&c.id, req.height, req.width)
            .await
            .map_err(Error::Agent)?;
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
            self.exec(&req.id, &req.exec_id)?.process.close_stdin();
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
        let c = self.task(&req.id)?;
        if c.is_sandbox() {
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
        let limits = vpod_sandbox::oci::limits(Some(&resources));
        let pod = self.pod().await?;
        pod.update_container(&c.id, limits)
            .await
            .map_err(Error::Agent)?;
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
        if self.tasks().is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
