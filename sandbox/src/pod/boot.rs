//! A pod's boot, stage by stage: check the config, make its dirs and disks, lease the VMM's uid and
//! hand it the vsock directory, start the VMM process (jailed; its tap made in the pod's netns
//! when it has one), plumb the network, wait for the agent's READY call, mount the
//! ephemeral disk, configure the guest's network. On any failure everything made so far is
//! removed again.

use std::time::Instant;

use tonic::transport::Channel;
use vpod_agent_api::{AgentChannel, AgentClient, ReadyListener, AGENT_VSOCK_PORT};
use vpod_vmm::{Console, DiskConfig, VmConfig, VmExit, VsockConfig};

use super::agent::PodAgent;
use super::config::{valid_pod_id, BootTimes, PodConfig};
use super::error::PodError;
use super::files::{give_to, paths, prepare};
use super::slots::Slots;
use super::Pod;
use crate::vmm_process::{VmProcess, VmmLaunch};

impl Pod {
    /// Makes the state directory and ephemeral disk, boots the VM, waits
    /// for the agent's READY call, mounts the ephemeral disk in the guest.
    /// On any failure everything made so far is removed again.
    pub async fn boot(cfg: PodConfig) -> Result<Pod, PodError> {
        check(&cfg)?;
        let id = cfg.id.as_str();
        let mut times = BootTimes::default();
        let t0 = Instant::now();
        // From here on the directories are ours to remove on failure.
        let (cleanup, disks, slots) = prepare(&cfg)?;
        times.disk = t0.elapsed();

        let lease = crate::vmm_process::lease(&cfg.vmm, id).map_err(|source| PodError::Vm {
            id: id.into(),
            source,
        })?;
        let uid = lease.as_ref().map(|l| l.uid());
        let vsock_dir = paths::vsock_dir(&cfg.dir);
        if let Some(uid) = uid {
            give_to(id, &vsock_dir, uid)?;
        }
        let ready = listen_for_ready(&cfg)?;
        if let Some(uid) = uid {
            give_to(id, ready.path(), uid)?;
        }
        let t1 = Instant::now();
        let launch = VmmLaunch {
            pod_id: id.into(),
            pod_dir: cfg.dir.clone(),
            vm: vm_config(&cfg, disks),
            vsock_dir,
            netns: cfg.net.as_ref().map(|n| n.netns.clone()),
            lease,
        };
        let vm = VmProcess::start(&cfg.vmm, launch, cfg.boot_timeout).map_err(|source| {
            PodError::Vm {
                id: id.into(),
                source,
            }
        })?;
        times.vm_start = t1.elapsed();
        times.jail = vm.report().jail_setup;
        let exit = vm.exit();
        let mut pod = Pod {
            id: id.into(),
            dir: cfg.dir.clone(),
            ephemeral_dir: cfg.ephemeral_dir.clone(),
            vm,
            exit,
            agent: PodAgent::new(id, placeholder_client()),
            slots: Slots::new(slots),
            sysctls: cfg.sysctls.clone(),
            forwarder: None,
            memory: super::memory::PodMemory::new(cfg.mem_mib, cfg.hotplug_mib),
            boot_times: times,
        };
        // `pod` now owns the cleanup (its Drop stops the VM, removes the dirs).
        cleanup.disarm();

        if let Some(n) = &cfg.net {
            crate::net::redirect(n, crate::net::TAP_NAME).map_err(|source| PodError::Net {
                id: id.into(),
                source,
            })?;
        }
        // The port-forward steering (a thread in the netns, an iptables-restore) while the
        // guest boots.
        let steering = cfg.net.as_ref().map(|n| {
            let netns = n.netns.clone();
            tokio::task::spawn_blocking(move || crate::portforward::steer(&netns))
        });
        let t2 = Instant::now();
        // A boot that failed says so first; the steering thread ends on its own.
        pod.agent = pod.wait_ready(ready, &cfg).await?;
        pod.boot_times.ready = t2.elapsed();
        let listener = match steering {
            Some(s) => Some(
                s.await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r.map_err(std::io::Error::other))
                    .map_err(|source| PodError::PortForward {
                        id: id.into(),
                        source,
                    })?,
            ),
            None => None,
        };
        if let Some(l) = listener {
            pod.forwarder = Some(
                crate::portforward::Forwarder::start(id, paths::vsock(&cfg.dir), l).map_err(
                    |source| PodError::PortForward {
                        id: id.into(),
                        source,
                    },
                )?,
            );
        }
        let t3 = Instant::now();
        pod.agent.mount_ephemeral().await?;
        pod.boot_times.ephemeral_mount = t3.elapsed();
        if let Some(n) = &cfg.net {
            pod.agent.configure_network(n).await?;
        }
        Ok(pod)
    }

    /// Waits for the guest's READY call (or the VM's early end), then connects to its agent.
    async fn wait_ready(
        &self,
        ready: ReadyListener,
        cfg: &PodConfig,
    ) -> Result<PodAgent, PodError> {
        let id = cfg.id.clone();
        let console = paths::console(&cfg.dir);
        let mut exit_rx = self.exit.clone();
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
        let client = vpod_agent_api::connect(&paths::vsock(&cfg.dir), AGENT_VSOCK_PORT)
            .await
            .map_err(|e| PodError::NotReady {
                id: id.clone(),
                msg: e.to_string(),
                console,
            })?;
        Ok(PodAgent::new(&id, client))
    }
}

/// What must hold before anything is made.
fn check(cfg: &PodConfig) -> Result<(), PodError> {
    if !valid_pod_id(&cfg.id) {
        return Err(PodError::BadId(cfg.id.clone()));
    }
    if !cfg.kernel.is_file() {
        return Err(PodError::NoKernel(cfg.kernel.clone()));
    }
    if !cfg.initrd.is_file() {
        return Err(PodError::NoInitrd(cfg.initrd.clone()));
    }
    if let Some(n) = &cfg.net {
        // Only a named netns CNI made: the VMM's tap goes there, and tc plumbs its veth.
        crate::policy::check_netns_path(&n.netns).map_err(|why| PodError::NetnsRefused {
            id: cfg.id.clone(),
            netns: n.netns.clone(),
            why,
        })?;
    }
    Ok(())
}

/// Listens on the vsock socket for the guest's READY call, before the VM can make it.
fn listen_for_ready(cfg: &PodConfig) -> Result<ReadyListener, PodError> {
    ReadyListener::bind(&paths::vsock(&cfg.dir)).map_err(|e| PodError::Io {
        id: cfg.id.clone(),
        op: "listen for the guest's READY call".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The VM of the pod: its disks, vsock, console file, hostname and tap.
fn vm_config(cfg: &PodConfig, disks: Vec<DiskConfig>) -> VmConfig {
    let mut vm_cfg = VmConfig::new(&cfg.kernel);
    vm_cfg.initrd = Some(cfg.initrd.clone());
    vm_cfg.vcpus = cfg.vcpus.max(1);
    vm_cfg.mem_mib = cfg.mem_mib;
    vm_cfg.hotplug_mib = cfg.hotplug_mib;
    vm_cfg.disks = disks;
    vm_cfg.vsock = Some(VsockConfig {
        uds_path: paths::vsock(&cfg.dir),
        guest_cid: vpod_vmm::config::DEFAULT_GUEST_CID,
    });
    vm_cfg.rng = true;
    vm_cfg.console = Console::File(paths::console(&cfg.dir));
    if !cfg.hostname.is_empty() {
        vm_cfg.cmdline = Some(format!("vpod.hostname={}", cfg.hostname));
    }
    if let Some(n) = &cfg.net {
        vm_cfg.net = Some(vpod_vmm::NetConfig {
            tap: crate::net::TAP_NAME.into(),
            mac: Some(n.mac),
        });
    }
    vm_cfg
}

/// A client that is never used: `Pod` holds one until the agent answers,
/// so a failed boot can still be dropped (and cleaned up) as a `Pod`.
fn placeholder_client() -> AgentClient<AgentChannel> {
    AgentClient::new(
        Channel::from_static("http://vpod-agent.invalid")
            .connect_lazy()
            .into(),
    )
}
