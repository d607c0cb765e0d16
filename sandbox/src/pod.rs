//! A running pod: its microVM (in this process, through vpod-vmm), its
//! state directory and the agent client that drives its containers.
//!
//! ```text
//! PodConfig ──boot──► Pod { vm, agent } ──create/start/exec/...──► vpod-init
//!                      │ state dir: ephemeral.img, slot-N.img, vsock.sock, console.log
//!                      └ Drop: stops the VM, deletes the state dir
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Channel;
use vpod_agent_api::pb::{
    ContainerRef, CreateContainerRequest, ExitStatus, MountEphemeralRequest, PutVolumeRequest,
    ShutdownKind, ShutdownRequest, StopContainerRequest,
};
use vpod_agent_api::{AgentClient, ReadyListener, AGENT_VSOCK_PORT};
use vpod_vmm::{Console, DiskConfig, RunningVm, VmConfig, VmExit, Vmm, VsockConfig};

use crate::ephemeral;

/// virtio-blk serial of the pod's ephemeral disk.
pub const EPHEMERAL_SERIAL: &str = "eph";
/// Empty slots a pod boots with for images of containers created later.
pub const DEFAULT_SPARE_SLOTS: usize = 2;
/// How long a boot may take before the pod is given up (the test bed's
/// nested, emulated KVM is slow; real KVM boots in tens of ms).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of an empty slot's placeholder file.
const SLOT_PLACEHOLDER_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod id {0:?}: use 1-40 of [a-z0-9-]")]
    BadId(String),
    #[error("guest kernel {0} not found (build it with `make guest`, or pass --kernel)")]
    NoKernel(PathBuf),
    #[error("guest initramfs {0} not found (build it with `make guest`, or pass --initrd)")]
    NoInitrd(PathBuf),
    #[error("pod {id}: state directory {path} already exists (is the pod running? `vpod rm` it)")]
    Exists { id: String, path: PathBuf },
    #[error("pod {id}: {op}: {source}")]
    Io {
        id: String,
        op: String,
        source: std::io::Error,
    },
    #[error("pod {id}: ephemeral disk: {source}")]
    Ephemeral {
        id: String,
        source: ephemeral::EphemeralError,
    },
    #[error("pod {id}: start the VM: {source}")]
    Vm {
        id: String,
        source: vpod_vmm::BuildError,
    },
    #[error("pod {id}: the VM ended before its agent was ready ({exit:?}); console: {console}")]
    EarlyExit {
        id: String,
        exit: VmExit,
        console: PathBuf,
    },
    #[error("pod {id}: agent not ready: {msg}; console: {console}")]
    NotReady {
        id: String,
        msg: String,
        console: PathBuf,
    },
    #[error("pod {id}: {what}: {status}")]
    Agent {
        id: String,
        what: String,
        status: tonic::Status,
    },
    #[error("pod {id}: no free disk slot for image {serial} (the pod booted with {slots})")]
    NoSlot {
        id: String,
        serial: String,
        slots: usize,
    },
    #[error("pod {id}: container {container}: {source}")]
    Oci {
        id: String,
        container: String,
        source: crate::oci::OciError,
    },
    #[error("pod {id}: container {container}: {source}")]
    HostVolume {
        id: String,
        container: String,
        source: crate::volumes::HostVolumeError,
    },
    #[error("pod {id}: network: {source}")]
    Net {
        id: String,
        source: crate::net::NetError,
    },
    #[error("pod {id}: enter netns {netns}: {source}")]
    Netns {
        id: String,
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("pod {id}: swap disk slot: {source}")]
    Slot {
        id: String,
        source: vpod_vmm::VmOpError,
    },
}

/// An image disk to attach.
#[derive(Debug, Clone)]
pub struct ImageDisk {
    /// virtio-blk serial the guest finds it by (at most 20 bytes).
    pub serial: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct PodConfig {
    pub id: String,
    /// The pod's state directory (created; must not exist).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Size of the ephemeral disk (sparse): the pod's ephemeral-storage limit.
    pub ephemeral_bytes: u64,
    /// Image disks attached at boot.
    pub images: Vec<ImageDisk>,
    /// Empty slots for images of containers created after boot.
    pub spare_slots: usize,
    pub hostname: String,
    pub boot_timeout: Duration,
    /// The netns CNI made for the pod: the VM's tap goes there.
    pub net: Option<crate::net::PodNet>,
}

/// How long each boot stage took (host clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    pub disk: Duration,
    pub vm_start: Duration,
    pub ready: Duration,
    pub ephemeral_mount: Duration,
}

struct Slot {
    index: usize,
    serial: Option<String>,
}

/// A booted pod. Dropping it stops the VM and deletes its state directory.
pub struct Pod {
    id: String,
    dir: PathBuf,
    vm: Arc<RunningVm>,
    exit: watch::Receiver<Option<VmExit>>,
    agent: AgentClient<Channel>,
    slots: Mutex<Vec<Slot>>,
    pub boot_times: BootTimes,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish()
    }
}

pub fn valid_pod_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Paths inside a pod's state directory.
pub mod paths {
    use std::path::{Path, PathBuf};
    pub fn vsock(dir: &Path) -> PathBuf {
        dir.join("vsock.sock")
    }
    pub fn console(dir: &Path) -> PathBuf {
        dir.join("console.log")
    }
    pub fn ephemeral(dir: &Path) -> PathBuf {
        dir.join("ephemeral.img")
    }
    pub fn slot(dir: &Path, n: usize) -> PathBuf {
        dir.join(format!("slot-{n}.img"))
    }
}

impl Pod {
    /// Makes the state directory and ephemeral disk, boots the VM, waits
    /// for the agent's READY call, mounts the ephemeral disk in the guest.
    /// On any failure everything made so far is removed again.
    pub async fn boot(cfg: PodConfig) -> Result<Pod, PodError> {
        let id = cfg.id.clone();
        if !valid_pod_id(&id) {
            return Err(PodError::BadId(id));
        }
        if !cfg.kernel.is_file() {
            return Err(PodError::NoKernel(cfg.kernel));
        }
        if !cfg.initrd.is_file() {
            return Err(PodError::NoInitrd(cfg.initrd));
        }
        if cfg.dir.exists() {
            return Err(PodError::Exists {
                id,
                path: cfg.dir.clone(),
            });
        }
        std::fs::create_dir_all(&cfg.dir).map_err(|source| PodError::Io {
            id: id.clone(),
            op: format!("create {}", cfg.dir.display()),
            source,
        })?;
        // From here on the directory is ours to remove on failure.
        let cleanup = DirGuard(Some(cfg.dir.clone()));
        let mut times = BootTimes::default();
        let t0 = Instant::now();
        let eph = paths::ephemeral(&cfg.dir);
        ephemeral::create(&eph, cfg.ephemeral_bytes).map_err(|source| PodError::Ephemeral {
            id: id.clone(),
            source,
        })?;
        let mut disks = vec![DiskConfig {
            path: eph,
            read_only: false,
            id: Some(EPHEMERAL_SERIAL.into()),
        }];
        for img in &cfg.images {
            disks.push(DiskConfig {
                path: img.path.clone(),
                read_only: true,
                id: Some(img.serial.clone()),
            });
        }
        let mut slots = Vec::new();
        for n in 0..cfg.spare_slots {
            let path = paths::slot(&cfg.dir, n);
            std::fs::write(&path, [0u8; SLOT_PLACEHOLDER_BYTES]).map_err(|source| {
                PodError::Io {
                    id: id.clone(),
                    op: format!("write {}", path.display()),
                    source,
                }
            })?;
            slots.push(Slot {
                index: disks.len(),
                serial: None,
            });
            disks.push(DiskConfig {
                path,
                read_only: true,
                id: Some(format!("slot-{n}")),
            });
        }
        times.disk = t0.elapsed();

        let vsock = paths::vsock(&cfg.dir);
        let ready = ReadyListener::bind(&vsock).map_err(|e| PodError::Io {
            id: id.clone(),
            op: "listen for the guest's READY call".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let console = paths::console(&cfg.dir);
        let mut vm_cfg = VmConfig::new(&cfg.kernel);
        vm_cfg.initrd = Some(cfg.initrd.clone());
        vm_cfg.vcpus = cfg.vcpus.max(1);
        vm_cfg.mem_mib = cfg.mem_mib;
        vm_cfg.disks = disks;
        vm_cfg.vsock = Some(VsockConfig {
            uds_path: vsock.clone(),
            guest_cid: vpod_vmm::config::DEFAULT_GUEST_CID,
        });
        vm_cfg.rng = true;
        vm_cfg.console = Console::File(console.clone());
        if !cfg.hostname.is_empty() {
            vm_cfg.cmdline = Some(format!("vpod.hostname={}", cfg.hostname));
        }
        if let Some(n) = &cfg.net {
            vm_cfg.net = Some(vpod_vmm::NetConfig {
                tap: crate::net::TAP_NAME.into(),
                mac: Some(n.mac),
            });
        }
        let t1 = Instant::now();
        let vm = Arc::new(start_vm(&id, vm_cfg, cfg.net.as_ref())?);
        times.vm_start = t1.elapsed();
        let (exit_tx, exit) = watch::channel(None);
        {
            let vm = vm.clone();
            std::thread::Builder::new()
                .name(format!("pod-{id}-wait"))
                .stack_size(vpod_vmm::THREAD_STACK_SIZE)
                .spawn(move || {
                    let e = vm.wait();
                    let _ = exit_tx.send(Some(e));
                })
                .map_err(|source| PodError::Io {
                    id: id.clone(),
                    op: "spawn the VM waiter".into(),
                    source,
                })?;
        }
        let mut pod = Pod {
            id: id.clone(),
            dir: cfg.dir.clone(),
            vm,
            exit,
            agent: placeholder_client(),
            slots: Mutex::new(slots),
            boot_times: times,
        };
        // `pod` now owns the cleanup (its Drop stops the VM, removes the dir).
        std::mem::forget(cleanup);

        if let Some(n) = &cfg.net {
            crate::net::redirect(n, crate::net::TAP_NAME).map_err(|source| PodError::Net {
                id: id.clone(),
                source,
            })?;
        }
        let t2 = Instant::now();
        let mut exit_rx = pod.exit.clone();
        tokio::select! {
            r = ready.wait(cfg.boot_timeout) => {
                if let Err(e) = r {
                    return Err(PodError::NotReady { id, msg: e.to_string(), console });
                }
            }
            e = exit_rx.wait_for(|e| e.is_some()) => {
                let exit = e.ok().and_then(|e| e.clone()).unwrap_or(VmExit::Stopped);
                return Err(PodError::EarlyExit { id, exit, console });
            }
        }
        pod.agent = vpod_agent_api::connect(&vsock, AGENT_VSOCK_PORT)
            .await
            .map_err(|e| PodError::NotReady {
                id: id.clone(),
                msg: e.to_string(),
                console: console.clone(),
            })?;
        pod.boot_times.ready = t2.elapsed();
        let t3 = Instant::now();
        pod.agent()
            .mount_ephemeral(MountEphemeralRequest {
                disk: EPHEMERAL_SERIAL.into(),
            })
            .await
            .map_err(|status| pod.agent_err("mount the ephemeral disk", status))?;
        pod.boot_times.ephemeral_mount = t3.elapsed();
        if let Some(n) = &cfg.net {
            pod.agent()
                .configure_network(crate::net::guest_request(n))
                .await
                .map_err(|status| pod.agent_err("configure the guest's network", status))?;
        }
        Ok(pod)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client of the pod's agent (cheap to clone; shares the connection).
    pub fn agent(&self) -> AgentClient<Channel> {
        self.agent.clone()
    }

    pub fn agent_err(&self, what: &str, status: tonic::Status) -> PodError {
        PodError::Agent {
            id: self.id.clone(),
            what: what.into(),
            status,
        }
    }

    /// Whether the VM has ended, and how.
    pub fn vm_exit(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// The VMM's counters.
    pub fn vm_metrics(&self) -> vpod_vmm::VmMetrics {
        self.vm.metrics()
    }

    pub async fn put_volume(&self, req: PutVolumeRequest) -> Result<u64, PodError> {
        let name = req.name.clone();
        Ok(self
            .agent()
            .put_volume(req)
            .await
            .map_err(|s| self.agent_err(&format!("put volume {name}"), s))?
            .into_inner()
            .generation)
    }

    /// Puts an image disk into a free slot (a container created after boot).
    pub fn attach_image(&self, img: &ImageDisk) -> Result<(), PodError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots
            .iter()
            .any(|s| s.serial.as_deref() == Some(&img.serial))
        {
            return Ok(());
        }
        let n = slots.len();
        let slot = slots
            .iter_mut()
            .find(|s| s.serial.is_none())
            .ok_or_else(|| PodError::NoSlot {
                id: self.id.clone(),
                serial: img.serial.clone(),
                slots: n,
            })?;
        self.vm
            .swap_disk(slot.index, &img.path, Some(&img.serial))
            .map_err(|source| PodError::Slot {
                id: self.id.clone(),
                source,
            })?;
        slot.serial = Some(img.serial.clone());
        Ok(())
    }

    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<(), PodError> {
        let id = req.id.clone();
        self.agent()
            .create_container(req)
            .await
            .map_err(|s| self.agent_err(&format!("create container {id}"), s))?;
        Ok(())
    }

    /// Creates container `id` from its OCI spec: checks the policy (nothing
    /// reaches the guest when it refuses), pushes its volumes, creates it.
    /// Returns the host volumes to keep watching ([`crate::volumes::watch`]).
    pub async fn create_container_oci(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        image_serial: &str,
        classifier: &crate::MountClassifier,
        stdin: bool,
    ) -> Result<Vec<(crate::volumes::HostVolume, u64)>, PodError> {
        let mut plan =
            crate::oci::container_plan(id, spec, image_serial, classifier).map_err(|source| {
                PodError::Oci {
                    id: self.id.clone(),
                    container: id.into(),
                    source,
                }
            })?;
        for v in plan.once {
            self.put_volume(v).await?;
        }
        let mut watched = Vec::new();
        for v in plan.watched {
            let files = v.read().map_err(|source| PodError::HostVolume {
                id: self.id.clone(),
                container: id.into(),
                source,
            })?;
            let fp = crate::volumes::fingerprint(&files);
            self.put_volume(v.request(files)).await?;
            watched.push((v, fp));
        }
        // An OCI spec has no word on stdin: the caller's IO does.
        if let Some(p) = plan.request.process.as_mut() {
            p.stdin = stdin;
        }
        self.create_container(plan.request).await?;
        Ok(watched)
    }

    pub async fn start_container(&self, id: &str) -> Result<u32, PodError> {
        Ok(self
            .agent()
            .start_container(ContainerRef { id: id.into() })
            .await
            .map_err(|s| self.agent_err(&format!("start container {id}"), s))?
            .into_inner()
            .pid)
    }

    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus, PodError> {
        Ok(self
            .agent()
            .wait_container(ContainerRef { id: id.into() })
            .await
            .map_err(|s| self.agent_err(&format!("wait for container {id}"), s))?
            .into_inner())
    }

    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitStatus, PodError> {
        Ok(self
            .agent()
            .stop_container(StopContainerRequest {
                id: id.into(),
                grace_period_ms: grace.as_millis().min(u32::MAX as u128) as u32,
                signal: 0,
            })
            .await
            .map_err(|s| self.agent_err(&format!("stop container {id}"), s))?
            .into_inner())
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        self.agent()
            .remove_container(ContainerRef { id: id.into() })
            .await
            .map_err(|s| self.agent_err(&format!("remove container {id}"), s))?;
        Ok(())
    }

    /// Asks the guest to power off and waits for the VM to end (stopping
    /// it if the guest does not go within `timeout`); then removes the
    /// state directory.
    pub async fn shutdown(self, timeout: Duration) -> VmExit {
        let mut agent = self.agent();
        let _ = tokio::time::timeout(
            timeout,
            agent.shutdown(ShutdownRequest {
                kind: ShutdownKind::Poweroff as i32,
            }),
        )
        .await;
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|e| e.clone()));
        let exit = match waited {
            Some(e) => e,
            None => {
                self.vm.stop();
                let _ = rx.wait_for(|e| e.is_some()).await;
                VmExit::Stopped
            }
        };
        drop(self);
        exit
    }
}

impl Pod {
    /// Stops the VM and removes the state dir now, even while other
    /// holders of the pod (watchers, waiters) still have it; what they
    /// then ask fails instead of leaking the VM. Dropping does the same.
    pub fn stop_now(&self) {
        self.vm.stop();
        remove_dir(&self.dir);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts the VM; with a pod netns, from a thread that entered it, so the
/// VMM makes its tap there (the VMM's threads stay in it, which is harmless:
/// they only use the tap and unix sockets).
fn start_vm(
    id: &str,
    vm_cfg: VmConfig,
    net: Option<&crate::net::PodNet>,
) -> Result<RunningVm, PodError> {
    let Some(net) = net else {
        return Vmm::start(vm_cfg).map_err(|source| PodError::Vm {
            id: id.into(),
            source,
        });
    };
    let netns = net.netns.clone();
    let joined = std::thread::scope(|s| {
        s.spawn(move || {
            let f = std::fs::File::open(&netns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok::<_, std::io::Error>(Vmm::start(vm_cfg))
        })
        .join()
    });
    match joined {
        Ok(Ok(started)) => started.map_err(|source| PodError::Vm {
            id: id.into(),
            source,
        }),
        Ok(Err(source)) => Err(PodError::Netns {
            id: id.into(),
            netns: net.netns.clone(),
            source,
        }),
        Err(_) => Err(PodError::Netns {
            id: id.into(),
            netns: net.netns.clone(),
            source: std::io::Error::other("VM start thread panicked"),
        }),
    }
}

struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            remove_dir(&d);
        }
    }
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that is never used: `Pod` holds one until the agent answers,
/// so a failed boot can still be dropped (and cleaned up) as a `Pod`.
fn placeholder_client() -> AgentClient<Channel> {
    AgentClient::new(Channel::from_static("http://vpod-agent.invalid").connect_lazy())
}
