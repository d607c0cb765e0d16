//! What the server knows of its pods and containers: CRI's view (ids, configs, states,
//! timestamps), each pod beside the `vpod_sandbox::Pod` that runs it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{ContainerConfig, ContainerState, PodSandboxConfig};
use vpod_sandbox::Pod;

use crate::cni::Attachment;
use crate::logs::CriLog;

/// Nanoseconds since the epoch: CRI's timestamps.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A new id: 32 hex digits from the kernel's random pool (a valid pod id for the sandbox).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One pod sandbox.
#[derive(Debug)]
pub struct PodEntry {
    /// Its id (also the sandbox crate's pod id).
    pub id: String,
    /// What RunPodSandbox was given.
    pub config: PodSandboxConfig,
    /// The RuntimeClass handler it was run with.
    pub runtime_handler: String,
    /// When it was created.
    pub created_at: i64,
    /// Its VM and network; the lock orders its lifecycle calls (a stop waits for a create).
    pub run: tokio::sync::Mutex<PodRun>,
    /// Whether it is ready (a cheap read for List calls).
    pub ready: std::sync::atomic::AtomicBool,
    /// Its containers, by id.
    pub containers: Mutex<BTreeMap<String, Arc<ContainerEntry>>>,
}

/// A pod's running parts.
#[derive(Debug, Default)]
pub struct PodRun {
    /// Its VM, until StopPodSandbox.
    pub vm: Option<Arc<Pod>>,
    /// Its CNI network, until StopPodSandbox.
    pub net: Option<Attachment>,
    /// The disk serial of each image attached (by manifest digest): one slot per image.
    pub disks: BTreeMap<String, String>,
}

impl PodEntry {
    /// Its name for messages: `namespace/name`.
    pub fn name(&self) -> String {
        self.config.metadata.as_ref().map_or_else(
            || self.id.clone(),
            |m| format!("{}/{}", m.namespace, m.name),
        )
    }
}

/// One container.
#[derive(Debug)]
pub struct ContainerEntry {
    /// Its id.
    pub id: String,
    /// Its pod's id.
    pub pod_id: String,
    /// What CreateContainer was given.
    pub config: ContainerConfig,
    /// The image as asked for.
    pub image: String,
    /// The image's manifest digest (CRI's image ref and id).
    pub image_ref: String,
    /// When it was created.
    pub created_at: i64,
    /// Its log file, if the pod has a log directory and the container a log path.
    pub log: Option<Arc<Mutex<CriLog>>>,
    /// Its state.
    pub run: Mutex<ContainerRun>,
    /// Becomes true once its exit is recorded.
    pub exited: tokio::sync::watch::Sender<bool>,
}

/// A container's state as CRI reports it.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// Created, running or exited.
    pub state: ContainerState,
    /// When it started (0: not yet).
    pub started_at: i64,
    /// When it ended (0: not yet).
    pub finished_at: i64,
    /// Its exit code.
    pub exit_code: i32,
    /// "Completed", "Error", "OOMKilled".
    pub reason: String,
    /// Its termination message.
    pub message: String,
}

impl Default for ContainerRun {
    fn default() -> Self {
        ContainerRun {
            state: ContainerState::ContainerCreated,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        }
    }
}

impl ContainerEntry {
    /// Its state now.
    pub fn run(&self) -> ContainerRun {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records its exit (the first one counts) and wakes whoever waits for it.
    pub fn set_exited(&self, exit: Option<&vpod_agent_api::pb::ExitStatus>) {
        {
            let mut r = self.run.lock().unwrap_or_else(|p| p.into_inner());
            if r.state == ContainerState::ContainerExited {
                return;
            }
            r.state = ContainerState::ContainerExited;
            r.finished_at = now_ns();
            match exit {
                Some(x) => {
                    r.exit_code = x.exit_code;
                    r.reason = if x.reason.is_empty() {
                        if x.exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        }
                        .into()
                    } else {
                        x.reason.clone()
                    };
                    r.message = String::from_utf8_lossy(&x.termination_message).into_owned();
                }
                None => {
                    // The VM went (a stopped pod) before the container reported its end.
                    r.exit_code = 255;
                    r.reason = "Error".into();
                    r.message = "the pod's VM ended before the container's exit was known".into();
                }
            }
        }
        self.exited.send_replace(true);
    }
}
