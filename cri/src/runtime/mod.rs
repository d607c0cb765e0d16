//! CRI's RuntimeService over `vpod_sandbox::Pod`: one microVM per pod sandbox, no pause
//! container. Each group of calls has its file:
//!
//! - `sandbox.rs`: Run/Stop/Remove/Status/List PodSandbox (VM boot, CNI, resolv.conf);
//! - `container.rs`: Create/Start/Stop/Remove/Status/List container, logs, resources;
//! - `exec.rs`: ExecSync, and the streaming calls (served by the streaming server, later);
//! - `info.rs`: Version, Status, RuntimeConfig, UpdateRuntimeConfig, stats, events.
//!
//! Every call maps its error through [`CriError`]'s one table.

mod container;
mod exec;
mod info;
mod sandbox;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::cni::Cni;
use crate::config::ServeConfig;
use crate::error::CriError;
use crate::state::{ContainerEntry, PodEntry};

/// The runtime: its config, the image store, its pods.
#[derive(Debug)]
pub struct Runtime {
    cfg: Arc<ServeConfig>,
    images: Arc<vpod_images::Store>,
    cni: Cni,
    pods: Mutex<HashMap<String, Arc<PodEntry>>>,
    /// GetContainerEvents' subscribers.
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
}

impl Runtime {
    /// A runtime serving `cfg` with the image store `images`.
    pub fn new(cfg: Arc<ServeConfig>, images: Arc<vpod_images::Store>) -> Runtime {
        Runtime {
            cni: Cni::new(&cfg.cni_conf_dir, &cfg.cni_bin_dirs),
            cfg,
            images,
            pods: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(info::EVENT_BUFFER).0,
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PodEntry>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod `id` (a full id, or a unique prefix as crictl gives).
    fn pod(&self, id: &str) -> Result<Arc<PodEntry>, CriError> {
        let pods = self.pods();
        if let Some(p) = pods.get(id) {
            return Ok(p.clone());
        }
        let found: Vec<_> = pods
            .values()
            .filter(|p| !id.is_empty() && p.id.starts_with(id))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(CriError::NotFound {
                what: "pod sandbox",
                id: id.into(),
            }),
        }
    }

    /// The container `id` (full or a unique prefix) and its pod.
    fn container(&self, id: &str) -> Result<(Arc<PodEntry>, Arc<ContainerEntry>), CriError> {
        let pods: Vec<Arc<PodEntry>> = self.pods().values().cloned().collect();
        let mut found = Vec::new();
        for p in pods {
            let cs = p.containers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cs.get(id) {
                return Ok((p.clone(), c.clone()));
            }
            if !id.is_empty() {
                for c in cs.values().filter(|c| c.id.starts_with(id)) {
                    found.push((p.clone(), c.clone()));
                }
            }
        }
        if found.len() == 1 {
            return Ok(found.remove(0));
        }
        Err(CriError::NotFound {
            what: "container",
            id: id.into(),
        })
    }

    /// Stops and removes every pod (the server is going down): their VMs, networks and state
    /// go with it. Pods do not outlive the server yet (no re-adoption at start).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.pods().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
            {
                tracing::warn!("pod {id}: remove at shutdown: {e}");
            }
        }
    }

    /// Takes down what a server that was killed left: each pod's network (DEL from its saved
    /// CNI result), its image leases, its state and disk dirs. Its VMMs died with it (their
    /// parent-death signal).
    pub async fn clean_leftovers(&self) {
        let pods_dir = self.cfg.state_dir.join("pods");
        for e in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            tracing::warn!("pod {id}: left by a server that did not stop; removing it");
            if let Ok(att) = crate::cni::Attachment::load(&e.path().join(sandbox::CNI_FILE)) {
                self.cni.del(&att).await;
            }
            let holder = container::lease_holder(&id);
            for d in self.images.refs().unwrap_or_default().into_values() {
                let _ = self.images.release(&d, &holder);
            }
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("remove {}: {err}", e.path().display());
            }
        }
        for e in std::fs::read_dir(&self.cfg.disk_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("remove {}: {err}", e.path().display());
            }
        }
    }
}

/// `Ok(Response)` of `r`, its error as a status.
fn answer<T>(r: Result<T, CriError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        answer(Ok(info::version()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        answer(self.run_pod_sandbox(r.into_inner()).await)
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        answer(self.stop_pod_sandbox(r.into_inner()).await)
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        answer(self.remove_pod_sandbox(r.into_inner()).await)
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        answer(self.pod_sandbox_status(r.into_inner()).await)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        answer(Ok(self.list_pod_sandbox(r.into_inner())))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        answer(self.create_container(r.into_inner()).await)
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        answer(self.start_container(r.into_inner()).await)
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        answer(self.stop_container(r.into_inner()).await)
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        answer(self.remove_container(r.into_inner()).await)
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        answer(Ok(self.list_containers(r.into_inner())))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        answer(self.container_status(r.into_inner()))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        answer(self.update_container_resources(r.into_inner()).await)
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        answer(self.reopen_container_log(r.into_inner()))
    }

    async fn exec_sync(
        &self,
        r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        answer(self.exec_sync(r.into_inner()).await)
    }

    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        answer(self.exec(r.into_inner()))
    }

    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        answer(self.attach(r.into_inner()))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        answer(self.port_forward(r.into_inner()))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        answer(self.container_stats(r.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        answer(Ok(self.list_container_stats(r.into_inner()).await))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        answer(self.pod_sandbox_stats(r.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        answer(Ok(self.list_pod_sandbox_stats(r.into_inner()).await))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // kubelet sends the pod CIDR here; the CNI config carries the network's own.
        answer(Ok(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        r: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        answer(Ok(self.status(r.into_inner())))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        answer(Err(CriError::Unimplemented(
            "CheckpointContainer: vpod does not checkpoint containers (a pod's state is its \
             microVM's)"
                .into(),
        )))
    }

    type GetContainerEventsStream = info::EventStream;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        answer(Ok(self.events()))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        answer(Ok(cri::ListMetricDescriptorsResponse::default()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        answer(Ok(cri::ListPodSandboxMetricsResponse::default()))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        answer(Ok(info::runtime_config()))
    }
}
