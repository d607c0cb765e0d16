//! The pod's VM as the shim holds it: its size, its boot, its teardown, and
//! the creation of its containers (policy first, volumes kept up to date).
//!
//! Every other call into the pod goes through its front, `vpod_sandbox::Pod`
//! (the agent's protocol and its rules live there); the shim maps the front's
//! `PodError` to its own [`Error`] where it calls it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vpod_sandbox::{CreateOptions, ImageDisk, MountClassifier, Pod, PodConfig, VmSize};

use crate::config::ShimConfig;
use crate::error::{Error, Result};

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
/// Where cgroup v2 is mounted (kubelet's pod cgroups are read there).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn vm_size(cfg: &ShimConfig, spec: &oci_spec::runtime::Spec, sandbox: bool) -> Result<VmSize> {
    let default = VmSize {
        vcpus: cfg.default_vcpus,
        mem_mib: cfg.default_memory_mib,
    };
    if sandbox {
        // kubelet's pod cgroup holds what the pod's containers and its overhead add up to.
        let pod = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .and_then(|p| {
                vpod_sandbox::Limits::from_pod_cgroup(&p.to_string_lossy(), Path::new(CGROUP_ROOT))
            });
        return Ok(match pod {
            Some(l) => {
                let s = VmSize::for_pod(&[l], host_cpus());
                VmSize {
                    // An unlimited side keeps the configured default.
                    vcpus: if l.cpus.is_some() {
                        s.vcpus
                    } else {
                        default.vcpus
                    },
                    mem_mib: if l.memory_bytes.is_some() {
                        s.mem_mib
                    } else {
                        default.mem_mib
                    },
                }
            }
            None => default,
        });
    }
    let l = vpod_sandbox::Limits::from_spec(spec)?;
    Ok(match l.memory_bytes {
        Some(_) => VmSize::for_pod(&[l], host_cpus()),
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
            ephemeral_dir: Some(b.ephemeral_dir),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            hotplug_mib: cfg.hotplug_memory_mib,
            ephemeral_bytes: cfg.ephemeral_bytes(),
            images: b.images,
            spare_slots: slots,
            hostname: hostname.unwrap_or_else(|| pid.clone()),
            net,
            vmm: cfg.vmm.clone(),
            // The sandbox's spec carries the pod's sysctls (containers join its namespaces).
            sysctls: b
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.sysctl().clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..PodConfig::new(&pid, b.state_dir, &cfg.kernel, &cfg.initrd)
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
        Pod::finish(pod, SHUTDOWN_TIMEOUT).await;
    }
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
        .create_container_with(
            id,
            spec,
            serial,
            classifier,
            CreateOptions {
                stdin,
                ..Default::default()
            },
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
    Ok(())
}
