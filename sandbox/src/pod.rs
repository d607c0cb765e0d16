//! A running pod: its microVM (in this process, through vpod-vmm), its
//! state directory and the agent client that drives its containers.
//!
//! ```text
//! PodConfig ──boot──► Pod { vm, agent } ──create/start/exec/...──► vpod-init
//!                      │ state dir: slot-N.img, vsock.sock, console.log
//!                      │ disk dir:  ephemeral.img (a real disk, not the tmpfs of /run)
//!                      └ Drop: stops the VM, deletes both dirs
//! ```
//!
//! Both dirs are 0700 and every file in them 0600, whatever the umask: they hold what the
//! guest writes (its disk, its console) and the socket that drives it.

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
    #[error("pod {id}: directory {path} already exists (is the pod running? `vpod rm` it)")]
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
        source: Box<crate::oci::OciError>,
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
    #[error("pod {id}: netns {netns} is refused: {why}")]
    NetnsRefused {
        id: String,
        netns: PathBuf,
        why: String,
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
    /// The pod's state directory (created 0700; must not exist).
    pub dir: PathBuf,
    /// Where the ephemeral disk goes: a directory made for this pod (0700; must not exist;
    /// removed with the pod) on a real disk, since every block the guest writes lands in it.
    /// `None`: in the state directory.
    pub ephemeral_dir: Option<PathBuf>,
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
    ephemeral_dir: Option<PathBuf>,
    vm: Arc<RunningVm>,
    exit: watch::Receiver<Option<VmExit>>,
    agent: AgentClient<vpod_agent_api::AgentChannel>,
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
        if let Some(n) = &cfg.net {
            // Only a named netns CNI made: the VMM's tap goes there, and tc plumbs its veth.
            crate::policy::check_netns_path(&n.netns).map_err(|why| PodError::NetnsRefused {
                id: id.clone(),
                netns: n.netns.clone(),
                why,
            })?;
        }
        let mut times = BootTimes::default();
        let t0 = Instant::now();
        // From here on the directories are ours to remove on failure.
        let (mut cleanup, disks, slots) = prepare(&cfg)?;
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
            ephemeral_dir: cfg.ephemeral_dir.clone(),
            vm,
            exit,
            agent: placeholder_client(),
            slots: Mutex::new(slots),
            boot_times: times,
        };
        // `pod` now owns the cleanup (its Drop stops the VM, removes the dirs).
        cleanup.0.clear();

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
    pub fn agent(&self) -> AgentClient<vpod_agent_api::AgentChannel> {
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
                    source: Box::new(source),
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
        if let Some(d) = &self.ephemeral_dir {
            remove_dir(d);
        }
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

/// Removes the directories it holds when dropped.
struct DirGuard(Vec<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        for d in self.0.drain(..) {
            remove_dir(&d);
        }
    }
}

/// Files of a pod: only its owner (root) reads them, whatever the umask.
pub const FILE_MODE: u32 = 0o600;
/// Directories of a pod.
pub const DIR_MODE: u32 = 0o700;

/// Makes `dir` (which must not exist) and any missing parents 0700.
fn make_private_dir(id: &str, dir: &Path) -> Result<(), PodError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.exists() {
        return Err(PodError::Exists {
            id: id.into(),
            path: dir.to_owned(),
        });
    }
    let io = |source| PodError::Io {
        id: id.into(),
        op: format!("create {}", dir.display()),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)
}

/// Creates `path` (new) as a 0600 file with `data`.
fn write_private_file(id: &str, path: &Path, data: &[u8]) -> Result<(), PodError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| PodError::Io {
        id: id.into(),
        op: format!("write {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io)?;
    f.write_all(data).map_err(io)
}

/// The pod's directories and disks before its VM starts: the state dir, the ephemeral disk's
/// dir, the ephemeral disk, the empty slots and the console file (made here so it is 0600 when
/// the VMM opens it).
fn prepare(cfg: &PodConfig) -> Result<(DirGuard, Vec<DiskConfig>, Vec<Slot>), PodError> {
    let id = cfg.id.as_str();
    make_private_dir(id, &cfg.dir)?;
    let mut cleanup = DirGuard(vec![cfg.dir.clone()]);
    let eph_dir = match &cfg.ephemeral_dir {
        Some(d) => {
            make_private_dir(id, d)?;
            cleanup.0.push(d.clone());
            d.as_path()
        }
        None => cfg.dir.as_path(),
    };
    let eph = paths::ephemeral(eph_dir);
    ephemeral::create(&eph, cfg.ephemeral_bytes).map_err(|source| PodError::Ephemeral {
        id: id.into(),
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
        write_private_file(id, &path, &[0u8; SLOT_PLACEHOLDER_BYTES])?;
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
    write_private_file(id, &paths::console(&cfg.dir), b"")?;
    Ok((cleanup, disks, slots))
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that is never used: `Pod` holds one until the agent answers,
/// so a failed boot can still be dropped (and cleaned up) as a `Pod`.
fn placeholder_client() -> AgentClient<vpod_agent_api::AgentChannel> {
    AgentClient::new(
        Channel::from_static("http://vpod-agent.invalid")
            .connect_lazy()
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn config(base: &Path) -> PodConfig {
        PodConfig {
            id: "p1".into(),
            dir: base.join("run/pods/p1"),
            ephemeral_dir: Some(base.join("lib/ephemeral/p1")),
            kernel: base.join("vmlinux"),
            initrd: base.join("initrd"),
            vcpus: 1,
            mem_mib: 128,
            ephemeral_bytes: 16 << 20,
            images: Vec::new(),
            spare_slots: 2,
            hostname: "p1".into(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            net: None,
        }
    }

    /// Issue 12 item 8: state dirs 0700, files 0600 (not the umask's 0755/0644), and the
    /// ephemeral disk in its own dir (a real disk), not in the state dir (/run, tmpfs).
    #[test]
    fn pod_dirs_and_files_are_private_and_the_disk_is_elsewhere() {
        let base = std::env::temp_dir().join(format!("vpod-pod-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let cfg = config(&base);
        let (guard, disks, slots) = prepare(&cfg).unwrap();
        let eph_dir = cfg.ephemeral_dir.clone().unwrap();
        for d in [&cfg.dir, &eph_dir, &base.join("run/pods")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(disks[0].path, eph_dir.join("ephemeral.img"));
        assert!(!paths::ephemeral(&cfg.dir).exists());
        assert_eq!(slots.len(), 2);
        for f in [
            disks[0].path.clone(),
            paths::slot(&cfg.dir, 0),
            paths::slot(&cfg.dir, 1),
            paths::console(&cfg.dir),
        ] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        // A second pod with the same dirs is refused; the first one's are left alone.
        assert!(matches!(prepare(&cfg), Err(PodError::Exists { .. })));
        drop(guard);
        assert!(!cfg.dir.exists() && !eph_dir.exists());
        // A leftover disk dir is refused, and the state dir made for it removed again.
        std::fs::create_dir_all(&eph_dir).unwrap();
        assert!(matches!(prepare(&cfg), Err(PodError::Exists { .. })));
        assert!(!cfg.dir.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Issue 12 item 6: a pod's netns is never the host's, whatever the caller passes.
    #[tokio::test]
    async fn a_netns_outside_the_netns_dirs_is_refused_before_anything_is_made() {
        let base = std::env::temp_dir().join(format!("vpod-pod-ns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("vmlinux"), "").unwrap();
        std::fs::write(base.join("initrd"), "").unwrap();
        let mut cfg = config(&base);
        cfg.net = Some(crate::net::PodNet {
            netns: "/proc/1/ns/net".into(),
            veth: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            address: "10.0.0.2".into(),
            prefix_len: 24,
            gateway: None,
            mtu: 1500,
        });
        let e = Pod::boot(cfg.clone()).await.unwrap_err();
        assert!(matches!(e, PodError::NetnsRefused { .. }), "{e}");
        assert!(!cfg.dir.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
