//! What the runtime says of itself (Version, Status, RuntimeConfig), the containers' stats
//! (read from each container's cgroup in its guest) and the container event stream.

use std::pin::Pin;

use k8s_cri::v1 as cri;
use tokio_stream::{Stream, StreamExt};

use super::Runtime;
use crate::error::Result;
use crate::state::{now_ns, ContainerEntry, PodEntry};

/// GetContainerEvents' stream.
pub type EventStream = Pin<
    Box<dyn Stream<Item = std::result::Result<cri::ContainerEventResponse, tonic::Status>> + Send>,
>;

/// Events buffered per subscriber; one that lags past this misses the oldest (kubelet then
/// relists, as with any missed event).
pub const EVENT_BUFFER: usize = 1024;

/// The CRI API version served.
const API_VERSION: &str = "v1";

pub(super) fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        // The kubelet-facing API version of the version call itself.
        version: "0.1.0".into(),
        runtime_name: "vpod".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: API_VERSION.into(),
    }
}

pub(super) fn runtime_config() -> cri::RuntimeConfigResponse {
    // The host's cgroups are not where pods run (each pod's are in its guest): kubelet's own
    // driver is whatever it is configured with; cgroupfs is what the guest uses.
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
        }),
    }
}

impl Runtime {
    pub(super) fn status(&self, _: cri::StatusRequest) -> cri::StatusResponse {
        let kernel = self.cfg.kernel.is_file() && self.cfg.initrd.is_file();
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: kernel,
            reason: if kernel { "" } else { "NoGuestKernel" }.into(),
            message: if kernel {
                String::new()
            } else {
                format!(
                    "guest kernel {} or initramfs {} missing (make install)",
                    self.cfg.kernel.display(),
                    self.cfg.initrd.display()
                )
            },
        };
        let network = match self.cni.network() {
            Ok(Some(_)) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                ..Default::default()
            },
            Ok(None) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!(
                    "no CNI network config in {}",
                    self.cfg.cni_conf_dir.display()
                ),
            },
            Err(e) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: e,
            },
        };
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info: Default::default(),
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: None,
        }
    }

    /// Tells every GetContainerEvents stream of a container's change.
    pub(super) fn event(&self, id: &str, pod: &str, typ: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let statuses = self
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .ok()
            .and_then(|s| s.status)
            .into_iter()
            .collect();
        // The pod's status as far as it is known without waiting on its lifecycle lock (the
        // event is sent from inside those calls): no network.
        let pod_sandbox_status = self.pod(pod).ok().map(|p| cri::PodSandboxStatus {
            id: p.id.clone(),
            metadata: p.config.metadata.clone(),
            state: super::sandbox::pod_state(&p) as i32,
            created_at: p.created_at,
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
            runtime_handler: p.runtime_handler.clone(),
            ..Default::default()
        });
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: typ as i32,
            created_at: now_ns(),
            pod_sandbox_status,
            containers_statuses: statuses,
        });
    }

    pub(super) fn events(&self) -> EventStream {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        // A subscriber that lagged skips what it missed.
        Box::pin(rx.filter_map(|r| r.ok().map(Ok)))
    }

    async fn stats_of(&self, pod: &PodEntry, c: &ContainerEntry) -> Option<cri::ContainerStats> {
        let vm = super::container::vm_of(pod).await.ok()?;
        let s = vm.container_stats(&c.id).await.ok()?;
        let ts = now_ns();
        let v = |x: u64| Some(cri::UInt64Value { value: x });
        Some(cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: v(s.cpu_usage_ns),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: v(s.memory_bytes),
                usage_bytes: v(s.memory_bytes),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: ts,
                fs_id: None,
                used_bytes: v(s.writable_layer_bytes),
                inodes_used: None,
            }),
            swap: None,
        })
    }

    pub(super) async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse> {
        let (pod, c) = self.container(&req.container_id)?;
        let stats = self.stats_of(&pod, &c).await;
        Ok(cri::ContainerStatsResponse { stats })
    }

    pub(super) async fn list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> cri::ListContainerStatsResponse {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for c in self.all_containers() {
            if (!f.id.is_empty() && !c.id.starts_with(&f.id))
                || (!f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id))
                || !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
                || c.run().state != cri::ContainerState::ContainerRunning
            {
                continue;
            }
            let Ok(pod) = self.pod(&c.pod_id) else {
                continue;
            };
            if let Some(s) = self.stats_of(&pod, &c).await {
                stats.push(s);
            }
        }
        cri::ListContainerStatsResponse { stats }
    }

    async fn pod_stats(&self, pod: &PodEntry) -> cri::PodSandboxStats {
        let containers: Vec<_> = pod
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut cs = Vec::new();
        for c in containers
            .iter()
            .filter(|c| c.run().state == cri::ContainerState::ContainerRunning)
        {
            if let Some(s) = self.stats_of(pod, c).await {
                cs.push(s);
            }
        }
        let ts = now_ns();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| {
            Some(cri::UInt64Value {
                value: cs.iter().filter_map(f).sum(),
            })
        };
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: pod.config.metadata.clone(),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: ts,
                    usage_core_nano_seconds: sum(&|s| {
                        s.cpu
                            .as_ref()?
                            .usage_core_nano_seconds
                            .as_ref()
                            .map(|v| v.value)
                    }),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: ts,
                    working_set_bytes: sum(&|s| {
                        s.memory
                            .as_ref()?
                            .working_set_bytes
                            .as_ref()
                            .map(|v| v.value)
                    }),
                    ..Default::default()
                }),
                network: None,
                process: None,
                containers: cs,
            }),
            windows: None,
        }
    }

    pub(super) async fn pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse> {
        let pod = self.pod(&req.pod_sandbox_id)?;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(self.pod_stats(&pod).await),
        })
    }

    pub(super) async fn list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> cri::ListPodSandboxStatsResponse {
        let f = req.filter.unwrap_or_default();
        let pods: Vec<_> = self.pods().values().cloned().collect();
        let mut stats = Vec::new();
        for p in pods {
            if (!f.id.is_empty() && !p.id.starts_with(&f.id))
                || !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| p.config.labels.get(k) == Some(v))
            {
                continue;
            }
            stats.push(self.pod_stats(&p).await);
        }
        cri::ListPodSandboxStatsResponse { stats }
    }
}
