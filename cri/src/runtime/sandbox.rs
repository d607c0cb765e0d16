//! Pod sandboxes: RunPodSandbox checks the pod's spec (host namespaces refused, naming the
//! field), joins it to the CNI network and boots its VM in that netns, sized from the pod's
//! resources; Stop takes the VM and the network down (idempotent); Remove forgets it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::{PodSandboxState, PodSandboxStateValue};
use serde_json::json;
use vpod_sandbox::{Limits, MountClassifier, Pod, PodConfig, VmSize};

use super::Runtime;
use crate::cni::PodRef;
use crate::error::{CriError, Result};
use crate::state::{new_id, now_ns, PodEntry, PodRun};

/// Empty disk slots a pod boots with: one per container image, attached at CreateContainer.
pub const POD_SLOTS: usize = 4;
/// A pod's CNI attachment, in its state dir.
pub const CNI_FILE: &str = "cni.json";
/// How long a pod's VM gets to power off at StopPodSandbox.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    /// The pod's own directory under the state dir.
    pub(super) fn pod_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(id)
    }

    pub(super) async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse> {
        let config = req
            .config
            .ok_or_else(|| CriError::Invalid("RunPodSandbox without a config".into()))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| CriError::Invalid("RunPodSandbox: the config has no metadata".into()))?;
        // One pod per name/namespace/attempt, as kubelet expects of a runtime.
        if self
            .pods()
            .values()
            .any(|p| p.config.metadata.as_ref() == Some(&meta))
        {
            return Err(CriError::Exists(format!(
                "pod sandbox {}/{} (attempt {}) exists already",
                meta.namespace, meta.name, meta.attempt
            )));
        }
        // The pod's spec goes through the policy before anything is made.
        let spec = crate::spec::sandbox(&config)?;
        vpod_sandbox::check_spec(&spec, &MountClassifier::new(&self.cfg.kubelet_root))
            .map_err(|e| CriError::Invalid(format!("pod {}/{}: {e}", meta.namespace, meta.name)))?;

        let id = new_id();
        let entry = Arc::new(PodEntry {
            id: id.clone(),
            config: config.clone(),
            runtime_handler: req.runtime_handler,
            created_at: now_ns(),
            run: tokio::sync::Mutex::new(PodRun::default()),
            ready: false.into(),
            containers: Default::default(),
        });
        let mut run = entry.run.lock().await;
        self.pods().insert(id.clone(), entry.clone());
        match self.boot(&entry, &mut run).await {
            Ok(()) => {
                entry.ready.store(true, Ordering::SeqCst);
                Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
            }
            Err(e) => {
                // Nothing of a failed pod stays: not its network, not its entry.
                self.take_down(&mut run).await;
                drop(run);
                self.pods().remove(&id);
                Err(e)
            }
        }
    }

    /// The pod's network, files and VM.
    async fn boot(&self, entry: &PodEntry, run: &mut PodRun) -> Result<()> {
        let config = &entry.config;
        let meta = config.metadata.clone().unwrap_or_default();
        let dir = self.pod_dir(&entry.id);
        std::fs::create_dir_all(&dir).map_err(|source| CriError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        set_mode(&dir, 0o700)?;
        write_resolv_conf(&dir, config.dns_config.as_ref())?;

        let net = match self.cni.network().map_err(CriError::Network)? {
            Some(network) => {
                let mappings: Vec<_> = config
                    .port_mappings
                    .iter()
                    .filter(|p| p.host_port > 0)
                    .map(|p| {
                        json!({
                            "hostPort": p.host_port,
                            "containerPort": p.container_port,
                            "protocol": match cri::Protocol::try_from(p.protocol) {
                                Ok(cri::Protocol::Udp) => "udp",
                                Ok(cri::Protocol::Sctp) => "sctp",
                                _ => "tcp",
                            },
                            "hostIP": p.host_ip,
                        })
                    })
                    .collect();
                let pod = PodRef {
                    id: &entry.id,
                    namespace: &meta.namespace,
                    name: &meta.name,
                    uid: &meta.uid,
                };
                let att = self
                    .cni
                    .add(network, &pod, json!(mappings))
                    .await
                    .map_err(CriError::Network)?;
                let inspected = vpod_sandbox::net::inspect(&att.netns);
                // Saved before anything else can fail: a killed server DELs it at its start.
                let saved = att.save(&dir.join(CNI_FILE));
                run.net = Some(att);
                saved.map_err(|source| CriError::Io {
                    op: "save the CNI result in",
                    path: dir.clone(),
                    source,
                })?;
                Some(inspected.map_err(|e| CriError::Network(e.to_string()))?)
            }
            None => None,
        };
        let size = self.vm_size(config);
        let hostname = if config.hostname.is_empty() {
            entry.id[..12].to_owned()
        } else {
            config.hostname.clone()
        };
        let sysctls = config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default();
        let t0 = std::time::Instant::now();
        let pod = Pod::boot(PodConfig {
            ephemeral_dir: Some(self.cfg.disk_dir.join(&entry.id)),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            hotplug_mib: self.cfg.hotplug_memory_mib,
            ephemeral_bytes: self.cfg.ephemeral_storage_mib << 20,
            spare_slots: POD_SLOTS,
            hostname,
            net,
            vmm: self.cfg.vmm.clone(),
            sysctls,
            ..PodConfig::new(
                &entry.id,
                dir.join("vm"),
                &self.cfg.kernel,
                &self.cfg.initrd,
            )
        })
        .await?;
        tracing::info!(
            "pod {} ({}) booted in {:?}: {} vCPU, {} MiB; {:?}",
            entry.id,
            entry.name(),
            t0.elapsed(),
            size.vcpus,
            size.mem_mib,
            pod.boot_times
        );
        run.vm = Some(Arc::new(pod));
        Ok(())
    }

    /// The VM's size: the pod's resources (kubelet's sum of its containers' limits) plus its
    /// overhead (the RuntimeClass's), else the configured default for the side not limited.
    fn vm_size(&self, config: &cri::PodSandboxConfig) -> VmSize {
        let default = VmSize {
            vcpus: self.cfg.default_vcpus,
            mem_mib: self.cfg.default_memory_mib,
        };
        let linux = config.linux.as_ref();
        let Some(res) = linux.and_then(|l| l.resources.as_ref()) else {
            return default;
        };
        let over = linux.and_then(|l| l.overhead.as_ref());
        let memory = (res.memory_limit_in_bytes > 0).then(|| {
            res.memory_limit_in_bytes as u64
                + over.map_or(0, |o| o.memory_limit_in_bytes.max(0) as u64)
        });
        let cpus = (res.cpu_quota > 0 && res.cpu_period > 0).then(|| {
            let o = over
                .filter(|o| o.cpu_quota > 0 && o.cpu_period > 0)
                .map_or(0.0, |o| o.cpu_quota as f64 / o.cpu_period as f64);
            res.cpu_quota as f64 / res.cpu_period as f64 + o
        });
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = VmSize::for_pod(
            &[Limits {
                memory_bytes: memory,
                cpus,
            }],
            host,
        );
        VmSize {
            vcpus: if cpus.is_some() {
                s.vcpus
            } else {
                default.vcpus
            },
            mem_mib: if memory.is_some() {
                s.mem_mib
            } else {
                default.mem_mib
            },
        }
    }

    /// Stops the pod's VM and network; its containers are reported exited.
    pub(super) async fn stop_pod(&self, entry: &PodEntry) -> Result<()> {
        let mut run = entry.run.lock().await;
        entry.ready.store(false, Ordering::SeqCst);
        self.take_down(&mut run).await;
        let containers: Vec<_> = entry
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for c in containers {
            // A container that exited keeps its status; one the VM took with it gets one.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                c.exited.subscribe().wait_for(|e| *e),
            )
            .await;
            c.set_exited(None);
        }
        Ok(())
    }

    /// The VM, then the network: whatever of them is up.
    async fn take_down(&self, run: &mut PodRun) {
        if let Some(vm) = run.vm.take() {
            Pod::finish(vm, SHUTDOWN_TIMEOUT).await;
        }
        if let Some(att) = run.net.take() {
            self.cni.del(&att).await;
        }
    }

    pub(super) async fn stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse> {
        // Stopping an unknown pod succeeds, as CRI requires (kubelet retries after a crash).
        if let Ok(entry) = self.pod(&req.pod_sandbox_id) {
            self.stop_pod(&entry).await?;
        }
        Ok(cri::StopPodSandboxResponse {})
    }

    pub(super) async fn remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse> {
        let Ok(entry) = self.pod(&req.pod_sandbox_id) else {
            return Ok(cri::RemovePodSandboxResponse {});
        };
        self.stop_pod(&entry).await?;
        let disks = std::mem::take(&mut entry.run.lock().await.disks);
        for d in disks
            .keys()
            .filter_map(|d| d.parse::<vpod_images::Digest>().ok())
        {
            if let Err(e) = self
                .images
                .release(&d, &super::container::lease_holder(&entry.id))
            {
                tracing::warn!("pod {}: release image {d}: {e}", entry.id);
            }
        }
        self.pods().remove(&entry.id);
        let dir = self.pod_dir(&entry.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(CriError::Io {
                    op: "remove",
                    path: dir,
                    source: e,
                });
            }
        }
        Ok(cri::RemovePodSandboxResponse {})
    }

    pub(super) async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let p = self.pod(&req.pod_sandbox_id)?;
        let ips = p
            .run
            .lock()
            .await
            .net
            .as_ref()
            .map(|n| n.ips.clone())
            .unwrap_or_default();
        let network = ips
            .split_first()
            .map(|(first, rest)| cri::PodSandboxNetworkStatus {
                ip: first.clone(),
                additional_ips: rest
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            });
        let opts = p
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let status = cri::PodSandboxStatus {
            id: p.id.clone(),
            metadata: p.config.metadata.clone(),
            state: pod_state(&p) as i32,
            created_at: p.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: opts }),
            }),
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
            runtime_handler: p.runtime_handler.clone(),
        };
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            ..Default::default()
        })
    }

    pub(super) fn list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> cri::ListPodSandboxResponse {
        let f = req.filter.unwrap_or_default();
        let mut items: Vec<cri::PodSandbox> = self
            .pods()
            .values()
            .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
            .filter(|p| {
                f.state
                    .as_ref()
                    .is_none_or(|s: &PodSandboxStateValue| s.state == pod_state(p) as i32)
            })
            .filter(|p| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| p.config.labels.get(k) == Some(v))
            })
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                state: pod_state(p) as i32,
                created_at: p.created_at,
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect();
        items.sort_by_key(|p| p.created_at);
        cri::ListPodSandboxResponse { items }
    }
}

pub(super) fn pod_state(p: &PodEntry) -> PodSandboxState {
    if p.ready.load(Ordering::SeqCst) {
        PodSandboxState::SandboxReady
    } else {
        PodSandboxState::SandboxNotready
    }
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        CriError::Io {
            op: "chmod",
            path: path.into(),
            source,
        }
    })
}

/// The pod's resolv.conf from its DNSConfig (kubelet's ClusterFirst servers and searches);
/// without one, the guest keeps what CNI's network gives it (none: no file).
fn write_resolv_conf(dir: &std::path::Path, dns: Option<&cri::DnsConfig>) -> Result<()> {
    let Some(dns) = dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty()) else {
        return Ok(());
    };
    let mut text = String::new();
    for s in &dns.servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    let path = dir.join("resolv.conf");
    std::fs::write(&path, text).map_err(|source| CriError::Io {
        op: "write",
        path: path.clone(),
        source,
    })?;
    set_mode(&path, 0o600)
}
