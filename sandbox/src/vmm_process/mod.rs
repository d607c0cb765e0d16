//! A pod's VMM as its own process: `vpod-vmm --control-fd 3`, jailed (see `vpod_jail`), driven
//! over the control channel of `vpod_vmm::control`. [`VmProcess`] is the host's handle: stop,
//! metrics, disk swaps, and how the VM ended, including a VMM that died (kill -9, SIGSYS from its
//! seccomp filter), which is noticed at once: the channel hangs up and the process is reaped.
//!
//! ```text
//! VmProcess::start ── thread "pod-<id>-vmm" ── spawn ──► vpod-vmm (waiter) ──► vpod-vmm (PID 1, jailed)
//!     ▲ Started / Failed          │ recv answers, Exited; hang-up → waitpid → cleanup → exit
//!     └────── answers ────────────┘
//! ```
//!
//! - `config.rs`: [`VmmProcessConfig`] (shim `[vmm]`, `vpod run --vmm-*`);
//! - `launch.rs`: the jail spec, the spawn and the launch message.

mod config;
mod launch;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vpod_jail::JailSpec;
use vpod_vmm::control::{Control, HostMessage, VmmMessage};
use vpod_vmm::{HotplugState, VmExit, VmMetrics, TEARDOWN_TIMEOUT};

pub use config::{
    VmmProcessConfig, DEFAULT_CGROUP_PARENT, DEFAULT_LEASE_DIR, DEFAULT_MEMORY_OVERHEAD_MIB,
    VMM_BINARY,
};
pub use launch::{lease, VmmLaunch};

/// How long a request waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VMM told to stop may take before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(TEARDOWN_TIMEOUT.as_secs() + 2);

/// Why the VMM process could not be started or asked something.
#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    /// The settings or the VM config don't fit together.
    #[error("VMM process config: {0}")]
    Config(String),
    /// No uid could be leased.
    #[error("leasing the VMM's uid: {0}")]
    Lease(String),
    /// The binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM said it could not start the VM (jail, KVM, a file, ...).
    #[error("the VMM failed to start the VM: {0}")]
    Failed(String),
    /// The VMM ended before it started the VM or answered.
    #[error("the VMM ended: {0}")]
    Ended(VmExit),
    /// No answer in time.
    #[error("the VMM did not answer within {0:?}")]
    Timeout(Duration),
    /// The VMM refused a request.
    #[error("the VMM refused: {0}")]
    Refused(String),
    /// The control channel failed.
    #[error("VMM control channel: {0}")]
    Control(String),
    /// Opening a file to hand to the VMM.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the VMM reported when the VM started.
#[derive(Debug, Clone, Copy)]
pub struct StartReport {
    /// The host pid of the process spawned (the jail's waiter when jailed).
    pub pid: u32,
    /// The VMM's own pid: 1 in its PID namespace when jailed.
    pub pid_in_jail: u32,
    /// The jail's setup inside the VMM (fork, namespaces, root, ids, ...).
    pub jail_setup: Duration,
    /// Process start to "started" (files opened, jail entered, filters built, VM started).
    pub process_to_started: Duration,
    /// The host's spawn call to the "started" answer.
    pub spawn_to_started: Duration,
    /// The uid it runs as (0 unjailed).
    pub uid: u32,
}

/// The host's handle on one pod's VMM process. Dropping it stops the VM.
#[derive(Debug)]
pub struct VmProcess {
    ctl: Mutex<Control>,
    answers: Mutex<mpsc::Receiver<VmmMessage>>,
    exit: watch::Receiver<Option<VmExit>>,
    stop_requested: Arc<AtomicBool>,
    report: StartReport,
    /// The jail's cgroup (its memory limit grows with plugged memory).
    cgroup: Option<vpod_jail::CgroupSpec>,
    /// The most hotplug memory ever asked for: the cgroup holds that much beyond its base (never
    /// less, since a guest gives memory back only when it gets round to unplugging it).
    grown: std::sync::atomic::AtomicU64,
}

impl VmProcess {
    /// Starts the VMM process and waits (at most `timeout`) until the VM runs.
    pub fn start(
        cfg: &VmmProcessConfig,
        mut launch: VmmLaunch,
        timeout: Duration,
    ) -> Result<VmProcess, VmProcessError> {
        let (spec, vm) = match &launch.lease {
            Some(lease) => {
                let (spec, vm) = launch::jail_spec(cfg, &launch, lease)?;
                (Some(spec), vm)
            }
            None => (None, launch.vm.clone()),
        };
        let uid = spec.as_ref().map_or(0, |s| s.uid);
        let cgroup = spec.as_ref().and_then(|s| s.cgroup.clone());
        let (host_end, vmm_end) =
            vpod_vmm::control::pair().map_err(|e| VmProcessError::Control(e.to_string()))?;
        let reader = host_end
            .try_clone()
            .map_err(|e| VmProcessError::Control(e.to_string()))?;
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let (answer_tx, answers) = mpsc::channel();
        let (exit_tx, exit) = watch::channel(None);
        let stop_requested = Arc::new(AtomicBool::new(false));
        let stop = stop_requested.clone();
        let cfg = cfg.clone();
        let name = format!("pod-{}-vmm", launch.pod_id);
        let t0 = Instant::now();
        std::thread::Builder::new()
            .name(name)
            .stack_size(vpod_vmm::THREAD_STACK_SIZE)
            .spawn(move || {
                let child = match launch::spawn(&cfg, &launch, spec.clone(), vm, &reader, vmm_end) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                // The host's copy of the lease can go: the jail's waiter holds it now.
                drop(launch.lease.take());
                let pid = child.id();
                let end = supervise(child, &reader, &stop, &started_tx, &answer_tx, pid);
                if let Some(spec) = &spec {
                    cleanup(spec);
                }
                drop(answer_tx);
                let _ = started_tx.try_send(Err(VmProcessError::Ended(end.clone())));
                let _ = exit_tx.send(Some(end));
            })
            .map_err(|e| VmProcessError::Spawn {
                binary: "(supervisor thread)".into(),
                source: e,
            })?;
        let mut report = match started_rx.recv_timeout(timeout) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // The thread is still waiting: tell it to kill the VMM, which ends it.
                stop_requested.store(true, Ordering::SeqCst);
                let _ = host_end.send(&HostMessage::Stop, &[]);
                return Err(VmProcessError::Timeout(timeout));
            }
        };
        report.spawn_to_started = t0.elapsed();
        report.uid = uid;
        Ok(VmProcess {
            ctl: Mutex::new(host_end),
            answers: Mutex::new(answers),
            exit,
            stop_requested,
            report,
            cgroup,
            grown: Default::default(),
        })
    }

    /// What the start reported.
    pub fn report(&self) -> StartReport {
        self.report
    }

    /// The host pid of the VMM process (the jail's waiter; the VMM is its only child).
    pub fn pid(&self) -> u32 {
        self.report.pid
    }

    /// How the VM ended, once it has.
    pub fn exit(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
    }

    /// Asks the VM to stop; a VMM that is not gone within its teardown time is killed.
    pub fn stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        let ctl = self.ctl.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ctl.send(&HostMessage::Stop, &[]);
    }

    /// The VMM's counters so far.
    pub fn metrics(&self) -> Result<VmMetrics, VmProcessError> {
        match self.request(&HostMessage::Metrics, None)? {
            VmmMessage::Metrics { metrics, .. } => Ok(metrics),
            other => Err(VmProcessError::Control(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The guest's hotplug memory: the region, what was asked, what it plugged.
    pub fn hotplug(&self) -> Result<HotplugState, VmProcessError> {
        match self.request(&HostMessage::Metrics, None)? {
            VmmMessage::Metrics { hotplug, .. } => Ok(hotplug),
            other => Err(VmProcessError::Control(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Asks the guest to plug `bytes` of hotplug memory in all. The VMM's cgroup may hold that
    /// much more first, so what the guest plugs is charged like its boot RAM, never beyond.
    pub fn request_hotplug(&self, bytes: u64) -> Result<(), VmProcessError> {
        if let (Some(cg), Some(base)) = (
            &self.cgroup,
            self.cgroup.as_ref().and_then(|c| c.memory_max),
        ) {
            if bytes > self.grown.load(Ordering::SeqCst) {
                vpod_jail::set_memory_max(cg, base.saturating_add(bytes))
                    .map_err(|e| VmProcessError::Control(format!("growing the cgroup: {e}")))?;
                self.grown.fetch_max(bytes, Ordering::SeqCst);
            }
        }
        match self.request(&HostMessage::RequestHotplug { bytes }, None)? {
            VmmMessage::Done => Ok(()),
            other => Err(VmProcessError::Control(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Backs disk slot `index` with `path` (opened here, read-only, and handed to the VMM).
    pub fn swap_disk(
        &self,
        index: usize,
        path: &Path,
        id: Option<&str>,
    ) -> Result<(), VmProcessError> {
        let file = std::fs::File::open(path).map_err(|source| VmProcessError::Open {
            path: path.to_owned(),
            source,
        })?;
        let msg = HostMessage::SwapDisk {
            index,
            id: id.map(str::to_owned),
        };
        match self.request(&msg, Some(file.as_raw_fd()))? {
            VmmMessage::Done => Ok(()),
            other => Err(VmProcessError::Control(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    fn request(
        &self,
        msg: &HostMessage,
        fd: Option<std::os::fd::RawFd>,
    ) -> Result<VmmMessage, VmProcessError> {
        // One request at a time (the answers lock); the control socket only for the send, so a
        // stop never waits behind a request whose answer is slow to come.
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // An answer that came after its asker gave up is not this request's.
        while answers.try_recv().is_ok() {}
        let ended = || self.exit.borrow().clone();
        if let Some(e) = ended() {
            return Err(VmProcessError::Ended(e));
        }
        let fds: Vec<_> = fd.into_iter().collect();
        self.ctl
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(msg, &fds)
            .map_err(|e| VmProcessError::Control(e.to_string()))?;
        match answers.recv_timeout(ANSWER_TIMEOUT) {
            Ok(VmmMessage::Refused { error }) => Err(VmProcessError::Refused(error)),
            Ok(a) => Ok(a),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(VmProcessError::Timeout(ANSWER_TIMEOUT)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The VMM is gone; the watch gets its end a moment later.
                let mut rx = self.exit.clone();
                let deadline = Instant::now() + Duration::from_secs(2);
                while rx.borrow_and_update().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(VmProcessError::Ended(
                    ended().unwrap_or(VmExit::Error("VMM gone".into())),
                ))
            }
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The supervisor thread's loop: the first message answers the start; later ones are answers or
/// the VM's end; a hang-up means the process is gone (or going): reap it and say how it ended.
fn supervise(
    mut child: Child,
    ctl: &Control,
    stop: &AtomicBool,
    started: &mpsc::SyncSender<Result<StartReport, VmProcessError>>,
    answers: &mpsc::Sender<VmmMessage>,
    pid: u32,
) -> VmExit {
    let mut said: Option<VmExit> = None;
    let mut stop_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let since = *stop_since.get_or_insert_with(Instant::now);
            if since.elapsed() > STOP_GRACE {
                tracing::warn!("VMM {pid} did not stop within {STOP_GRACE:?}: killing it");
                let _ = child.kill();
                break;
            }
        }
        match ctl.wait_readable(Duration::from_millis(250)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        match ctl.recv::<VmmMessage>() {
            Ok((
                VmmMessage::Started {
                    jail_setup_us,
                    process_to_started_us,
                    pid_in_jail,
                },
                _,
            )) => {
                let _ = started.try_send(Ok(StartReport {
                    pid,
                    pid_in_jail,
                    jail_setup: Duration::from_micros(jail_setup_us),
                    process_to_started: Duration::from_micros(process_to_started_us),
                    spawn_to_started: Duration::ZERO,
                    uid: 0,
                }));
            }
            Ok((VmmMessage::Failed { error }, _)) => {
                let _ = started.try_send(Err(VmProcessError::Failed(error.clone())));
                said = Some(VmExit::Error(error));
            }
            Ok((VmmMessage::Exited { exit, .. }, _)) => said = Some(exit),
            Ok((answer, _)) => {
                let _ = answers.send(answer);
            }
            Err(vpod_vmm::control::ControlError::Bad(e)) => {
                // A VMM that speaks garbage is not trusted with the VM any longer.
                tracing::warn!("VMM {pid}: {e}; killing it");
                let _ = child.kill();
                break;
            }
            Err(_) => break,
        }
    }
    let status = child.wait();
    end_of(said, status)
}

/// How the VM ended: what the VMM said, else what its exit status tells.
fn end_of(said: Option<VmExit>, status: std::io::Result<std::process::ExitStatus>) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(s) => s,
        Err(e) => return said.unwrap_or(VmExit::Error(format!("waiting for the VMM: {e}"))),
    };
    if let Some(sig) = status.signal() {
        // A VMM killed by a signal is reported so even if it had said something first.
        return VmExit::Killed(sig);
    }
    match said {
        Some(e) => e,
        None => VmExit::Error(format!(
            "the VMM exited with status {} without reporting why",
            status.code().unwrap_or(-1)
        )),
    }
}

/// What the jail leaves on the host: its cgroup and its root directory.
fn cleanup(spec: &JailSpec) {
    if let Err(e) = vpod_jail::cleanup(spec) {
        tracing::warn!("cleaning up the VMM's jail: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn ends() {
        let sigsys = ExitStatus::from_raw(libc::SIGSYS);
        assert!(end_of(None, Ok(sigsys)).is_seccomp_kill());
        assert_eq!(
            end_of(Some(VmExit::Poweroff), Ok(ExitStatus::from_raw(0))),
            VmExit::Poweroff
        );
        assert_eq!(
            end_of(Some(VmExit::Poweroff), Ok(ExitStatus::from_raw(9))),
            VmExit::Killed(9)
        );
        let e = end_of(None, Ok(ExitStatus::from_raw(1 << 8)));
        assert!(
            matches!(&e, VmExit::Error(m) if m.contains("status 1")),
            "{e:?}"
        );
    }
}
