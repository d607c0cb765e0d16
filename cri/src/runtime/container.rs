//! Containers: CreateContainer attaches the image's disk to a free slot of the pod's VM, makes
//! the container's spec and creates it through the sandbox's policy and translation, and starts
//! copying its output into kubelet's log file; the copy's end records the exit. Stop and Remove
//! of unknown or finished containers succeed, as CRI requires.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::ContainerState;
use vpod_images::FsType;
use vpod_sandbox::{CreateOptions, ImageDisk, MountClassifier, OutputEvent, Pod};

use super::Runtime;
use crate::error::{CriError, Result};
use crate::logs::{CriLog, Stream};
use crate::spec::ContainerInputs;
use crate::state::{new_id, now_ns, ContainerEntry, ContainerRun, PodEntry};

/// How long a removal waits for a killed container's exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    pub(super) async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse> {
        let pod = self.pod(&req.pod_sandbox_id)?;
        let config = req
            .config
            .ok_or_else(|| CriError::Invalid("CreateContainer without a config".into()))?;
        let meta = config.metadata.clone().ok_or_else(|| {
            CriError::Invalid("CreateContainer: the config has no metadata".into())
        })?;
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(CriError::Invalid(format!(
                "container {:?}: no image (containers[].image)",
                meta.name
            )));
        }
        // The log first: a container whose output has nowhere to go is not made (kubelet
        // makes the log's directory before it asks).
        let log = match log_path(&pod, &config)? {
            Some(p) => Some(Arc::new(Mutex::new(
                CriLog::open(&p, self.cfg.max_log_mib << 20).map_err(|source| CriError::Io {
                    op: "open the log",
                    path: p.clone(),
                    source,
                })?,
            ))),
            None => None,
        };
        let mut run = pod.run.lock().await;
        let vm = run.vm.clone().ok_or_else(|| {
            CriError::State(format!("pod sandbox {} is not ready (stopped)", pod.id))
        })?;
        if pod
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c.config.metadata.as_ref() == Some(&meta))
        {
            return Err(CriError::Exists(format!(
                "container {:?} (attempt {}) exists already in pod {}",
                meta.name,
                meta.attempt,
                pod.name()
            )));
        }

        // The image: resolved, its disk built once (blocking work off the runtime's threads).
        let store = self.images.clone();
        let name = image.clone();
        let holder = lease_holder(&pod.id);
        let (digest, disk, runtime_config) = tokio::task::spawn_blocking(move || {
            let d = store.resolve(&name)?;
            let disk = store.ensure_block_image(&d, FsType::detect())?;
            let (_, _, cf) = store.image_config(&d)?;
            // Held until the pod is removed: the image can't be removed under it.
            store.lease(&d, &holder)?;
            Ok::<_, vpod_images::Error>((d, disk, cf.config.unwrap_or_default()))
        })
        .await
        .map_err(|e| CriError::Invalid(format!("image {image}: {e}")))?
        .map_err(|e| match e {
            vpod_images::Error::NotFound(_) => CriError::NotFound {
                what: "image",
                id: format!("{image} (pull it first: PullImage)"),
            },
            e => CriError::Image(e),
        })?;
        let serial = match run.disks.get(&digest.to_string()) {
            Some(s) => s.clone(),
            None => {
                let serial = format!("img{}", run.disks.len());
                vm.attach_image(&ImageDisk {
                    serial: serial.clone(),
                    path: disk.path.clone(),
                })?;
                run.disks.insert(digest.to_string(), serial.clone());
                serial
            }
        };

        let dir = self.pod_dir(&pod.id);
        let resolv = dir.join("resolv.conf");
        let resolv = resolv.exists().then_some(resolv);
        let spec = crate::spec::container(
            &config,
            &ContainerInputs {
                pod: &pod.config,
                image: &runtime_config,
                image_name: &image,
                shared_pid: None,
                resolv_conf: resolv.as_deref(),
                seccomp_root: &self.cfg.kubelet_root.join("seccomp"),
            },
        )?;
        let pod_meta = pod.config.metadata.clone().unwrap_or_default();
        let mut classifier = MountClassifier::new(&self.cfg.kubelet_root)
            .for_pod(Some(&pod_meta.uid), Some(&pod.id));
        if let Some(r) = &resolv {
            classifier = classifier.with_runtime_file(r);
        }
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        let opts = CreateOptions {
            stdin: config.stdin,
            privileged: sc.is_some_and(|s| s.privileged),
            ..Default::default()
        };
        let id = new_id();
        let watched = vm
            .create_container_with(&id, &spec, &serial, &classifier, opts)
            .await?;
        if !watched.is_empty() {
            tokio::spawn(vpod_sandbox::volumes::watch(
                vm.clone(),
                watched,
                vpod_sandbox::volumes::DEFAULT_POLL,
                |v, r| {
                    if let Err(e) = r {
                        tracing::warn!("volume {} update: {e}", v.name);
                    }
                },
            ));
        }
        let entry = Arc::new(ContainerEntry {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config,
            image,
            image_ref: digest.to_string(),
            created_at: now_ns(),
            log,
            run: Mutex::new(ContainerRun::default()),
            exited: tokio::sync::watch::channel(false).0,
        });
        // Attached before it starts: none of its output is lost.
        let out = match vm.attach(&id).await {
            Ok(out) => out,
            Err(e) => {
                // Not half made: the guest forgets it too.
                if let Err(r) = vm.remove_container(&id).await {
                    tracing::warn!("container {id}: remove after a failed attach: {r}");
                }
                return Err(e.into());
            }
        };
        tokio::spawn(follow(vm, entry.clone(), out));
        pod.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), entry);
        self.event(&id, &pod.id, cri::ContainerEventType::ContainerCreatedEvent);
        Ok(cri::CreateContainerResponse { container_id: id })
    }

    pub(super) async fn start_container(
        &self,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse> {
        let (pod, c) = self.container(&req.container_id)?;
        let vm = vm_of(&pod).await?;
        let state = c.run().state;
        if state != ContainerState::ContainerCreated {
            return Err(CriError::State(format!(
                "container {} is {} (only a created container starts)",
                c.id,
                state.as_str_name()
            )));
        }
        vm.start_container(&c.id).await?;
        {
            let mut r = c.run.lock().unwrap_or_else(|p| p.into_inner());
            if r.state == ContainerState::ContainerCreated {
                r.state = ContainerState::ContainerRunning;
                r.started_at = now_ns();
            }
        }
        self.event(
            &c.id,
            &pod.id,
            cri::ContainerEventType::ContainerStartedEvent,
        );
        Ok(cri::StartContainerResponse {})
    }

    pub(super) async fn stop_container(
        &self,
        req: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse> {
        let Ok((pod, c)) = self.container(&req.container_id) else {
            return Ok(cri::StopContainerResponse {});
        };
        self.stop_one(&pod, &c, Duration::from_secs(req.timeout.max(0) as u64))
            .await?;
        Ok(cri::StopContainerResponse {})
    }

    /// Stops `c` within `grace` (SIGTERM, then SIGKILL); a container that is not running is
    /// left as it is.
    async fn stop_one(&self, pod: &PodEntry, c: &ContainerEntry, grace: Duration) -> Result<()> {
        if c.run().state != ContainerState::ContainerRunning {
            return Ok(());
        }
        let Ok(vm) = vm_of(pod).await else {
            return Ok(());
        };
        match vm.stop_container(&c.id, grace).await {
            Ok(exit) => c.set_exited(Some(&exit)),
            // It ended meanwhile: its follower records the exit.
            Err(e) if c.run().state == ContainerState::ContainerExited => {
                tracing::debug!("container {}: stop after its exit: {e}", c.id)
            }
            Err(e) => return Err(e.into()),
        }
        let _ = tokio::time::timeout(KILL_WAIT, c.exited.subscribe().wait_for(|e| *e)).await;
        self.event(
            &c.id,
            &pod.id,
            cri::ContainerEventType::ContainerStoppedEvent,
        );
        Ok(())
    }

    pub(super) async fn remove_container(
        &self,
        req: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse> {
        let Ok((pod, c)) = self.container(&req.container_id) else {
            return Ok(cri::RemoveContainerResponse {});
        };
        self.stop_one(&pod, &c, Duration::ZERO).await?;
        if let Ok(vm) = vm_of(&pod).await {
            if c.run().state == ContainerState::ContainerCreated {
                // Never started: its follower waits on an exit that won't come.
                c.set_exited(None);
            }
            vm.remove_container(&c.id).await?;
        }
        pod.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        self.event(
            &c.id,
            &pod.id,
            cri::ContainerEventType::ContainerDeletedEvent,
        );
        Ok(cri::RemoveContainerResponse {})
    }

    pub(super) fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> cri::ListContainersResponse {
        let f = req.filter.unwrap_or_default();
        let mut containers: Vec<cri::Container> = self
            .all_containers()
            .into_iter()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|s| s.state == c.run().state as i32)
            })
            .filter(|c| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(&c)),
                image_ref: c.image_ref.clone(),
                state: c.run().state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_ref.clone(),
            })
            .collect();
        containers.sort_by_key(|c| c.created_at);
        cri::ListContainersResponse { containers }
    }

    /// Every container of every pod.
    pub(super) fn all_containers(&self) -> Vec<Arc<ContainerEntry>> {
        let pods: Vec<Arc<PodEntry>> = self.pods().values().cloned().collect();
        pods.iter()
            .flat_map(|p| {
                p.containers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(super) fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse> {
        let (pod, c) = self.container(&req.container_id)?;
        let r = c.run();
        let mounts = c
            .config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect();
        let log_path = log_path(&pod, &c.config)?
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: r.state as i32,
            created_at: c.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            image: Some(image_spec(&c)),
            image_ref: c.image_ref.clone(),
            reason: r.reason,
            message: r.message,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts,
            log_path,
            resources: Some(cri::ContainerResources {
                linux: c.config.linux.as_ref().and_then(|l| l.resources.clone()),
                ..Default::default()
            }),
            image_id: c.image_ref.clone(),
            user: None,
        };
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info: Default::default(),
        })
    }

    pub(super) async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse> {
        let (pod, c) = self.container(&req.container_id)?;
        let vm = vm_of(&pod).await?;
        let res = req.linux.unwrap_or_default();
        // CRI's resources as an OCI spec's, read by the sandbox's one translation.
        let oci: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": (res.memory_limit_in_bytes > 0).then_some(serde_json::json!({"limit": res.memory_limit_in_bytes})),
            "cpu": {
                "quota": (res.cpu_quota > 0).then_some(res.cpu_quota),
                "period": (res.cpu_period > 0).then_some(res.cpu_period),
                "shares": (res.cpu_shares > 0).then_some(res.cpu_shares),
            },
        }))
        .map_err(|e| CriError::Invalid(format!("resources: {e}")))?;
        vm.update_container(&c.id, vpod_sandbox::oci::limits(Some(&oci)))
            .await?;
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    pub(super) fn reopen_container_log(
        &self,
        req: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse> {
        let (_, c) = self.container(&req.container_id)?;
        if c.run().state != ContainerState::ContainerRunning {
            return Err(CriError::State(format!(
                "container {} is not running: its log is not reopened",
                c.id
            )));
        }
        if let Some(log) = &c.log {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .reopen()
                .map_err(|source| CriError::Io {
                    op: "reopen the log of",
                    path: PathBuf::from(&c.id),
                    source,
                })?;
        }
        Ok(cri::ReopenContainerLogResponse {})
    }
}

/// The running VM of `pod`.
pub(super) async fn vm_of(pod: &PodEntry) -> Result<Arc<Pod>> {
    pod.run
        .lock()
        .await
        .vm
        .clone()
        .ok_or_else(|| CriError::State(format!("pod sandbox {} is stopped", pod.id)))
}

/// `<log_directory>/<log_path>`, checked: kubelet's relative path, no way out of the pod's dir.
fn log_path(pod: &PodEntry, config: &cri::ContainerConfig) -> Result<Option<PathBuf>> {
    let dir = &pod.config.log_directory;
    if dir.is_empty() || config.log_path.is_empty() {
        return Ok(None);
    }
    let rel = Path::new(&config.log_path);
    if !Path::new(dir).is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(CriError::Invalid(format!(
            "log path {:?} under {dir:?}: the log directory must be absolute and the log path \
             relative to it, without `..`",
            config.log_path
        )));
    }
    Ok(Some(Path::new(dir).join(rel)))
}

fn image_spec(c: &ContainerEntry) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image.clone(),
        annotations: BTreeMap::new().into_iter().collect(),
        ..Default::default()
    }
}

/// Who holds the lease on the images pod `id` uses.
pub(super) fn lease_holder(id: &str) -> String {
    format!("vpod-serve-{id}")
}

/// Copies the container's output into its log until it ends, then records its exit.
async fn follow(vm: Arc<Pod>, c: Arc<ContainerEntry>, mut out: vpod_sandbox::Output) {
    loop {
        let (stream, data) = match out.next().await {
            Ok(Some(OutputEvent::Stdout(d))) => (Stream::Stdout, d),
            Ok(Some(OutputEvent::Stderr(d))) => (Stream::Stderr, d),
            Ok(Some(OutputEvent::Exit(_))) => continue,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("container {}: output: {e}", c.id);
                break;
            }
        };
        if let Some(log) = &c.log {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(stream, &data);
        }
    }
    if let Some(log) = &c.log {
        log.lock().unwrap_or_else(|p| p.into_inner()).finish();
    }
    // A container removed before it started never exits: the removal records that.
    let mut exited = c.exited.subscribe();
    tokio::select! {
        r = vm.wait_container(&c.id) => match r {
            Ok(exit) => c.set_exited(Some(&exit)),
            Err(e) => {
                tracing::debug!("container {}: wait: {e}", c.id);
                c.set_exited(None);
            }
        },
        _ = exited.wait_for(|e| *e) => {}
    }
}
