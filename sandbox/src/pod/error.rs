//! What can go wrong with a pod: one error type for its boot and for every operation on its
//! containers, naming the pod and, for a container operation, the container and the operation.

use std::path::PathBuf;

use vpod_vmm::VmExit;

use crate::ephemeral::EphemeralError;
use crate::net::NetError;
use crate::oci::OciError;
use crate::volumes::HostVolumeError;

/// An operation on one container, as a [`PodError`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOp {
    /// CreateContainer.
    Create,
    /// StartContainer.
    Start,
    /// Attach: the container's output.
    Attach,
    /// WriteStdin: the container's stdin.
    WriteStdin,
    /// KillContainer: a signal.
    Kill,
    /// StopContainer: SIGTERM, then SIGKILL after the grace period.
    Stop,
    /// WaitContainer.
    Wait,
    /// RemoveContainer.
    Remove,
    /// ContainerStats.
    Stats,
    /// ResizeTty.
    ResizeTty,
    /// UpdateContainer: new cgroup limits.
    Update,
    /// Exec: a process in the container, its input and its output.
    Exec,
}

impl std::fmt::Display for ContainerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerOp::Create => "create",
            ContainerOp::Start => "start",
            ContainerOp::Attach => "attach to",
            ContainerOp::WriteStdin => "write to the stdin of",
            ContainerOp::Kill => "signal",
            ContainerOp::Stop => "stop",
            ContainerOp::Wait => "wait for",
            ContainerOp::Remove => "remove",
            ContainerOp::Stats => "read the stats of",
            ContainerOp::ResizeTty => "resize the tty of",
            ContainerOp::Update => "update",
            ContainerOp::Exec => "exec in",
        })
    }
}

/// Why a pod could not boot, or an operation on it or its containers failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod id is not 1-40 of `[a-z0-9-]`.
    #[error("pod id {0:?}: use 1-40 of [a-z0-9-]")]
    BadId(String),
    /// The guest kernel file is missing.
    #[error("guest kernel {0} not found (build it with `make guest`, or pass --kernel)")]
    NoKernel(PathBuf),
    /// The guest initramfs file is missing.
    #[error("guest initramfs {0} not found (build it with `make guest`, or pass --initrd)")]
    NoInitrd(PathBuf),
    /// One of the pod's directories exists already.
    #[error("pod {id}: directory {path} already exists (is the pod running? `vpod rm` it)")]
    Exists {
        /// The pod.
        id: String,
        /// The directory.
        path: PathBuf,
    },
    /// A host file operation failed.
    #[error("pod {id}: {op}: {source}")]
    Io {
        /// The pod.
        id: String,
        /// What was done.
        op: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The ephemeral disk could not be made.
    #[error("pod {id}: ephemeral disk: {source}")]
    Ephemeral {
        /// The pod.
        id: String,
        /// Why.
        source: EphemeralError,
    },
    /// The VM could not grow to hold a container's memory limit.
    #[error(
        "pod {id}: container {container} needs a VM of {need_mib} MiB \
         (resources.limits.memory of the pod's containers + guest overhead): {why}"
    )]
    Grow {
        /// The pod.
        id: String,
        /// The container being created.
        container: String,
        /// The VM size its limit needs.
        need_mib: u64,
        /// Why it did not grow.
        why: String,
    },
    /// The VMM refused the VM.
    #[error("pod {id}: its VMM: {source}")]
    Vm {
        /// The pod.
        id: String,
        /// Why.
        source: crate::vmm_process::VmProcessError,
    },
    /// The VM ended while it booted.
    #[error("pod {id}: the VM ended before its agent was ready ({exit}); console: {console}")]
    EarlyExit {
        /// The pod.
        id: String,
        /// How the VM ended.
        exit: VmExit,
        /// The guest's console log, which tells why.
        console: PathBuf,
    },
    /// The agent did not come up.
    #[error("pod {id}: agent not ready: {msg}; console: {console}")]
    NotReady {
        /// The pod.
        id: String,
        /// Why.
        msg: String,
        /// The guest's console log.
        console: PathBuf,
    },
    /// The agent of a running pod could not be reached.
    #[error("pod {id}: reach its agent: {source}")]
    Connect {
        /// The pod.
        id: String,
        /// Why.
        source: vpod_agent_api::Error,
    },
    /// The agent refused or failed a call about the pod as a whole.
    #[error("pod {id}: {what}: {}", .status.message())]
    Agent {
        /// The pod.
        id: String,
        /// What was asked.
        what: String,
        /// The agent's answer.
        status: tonic::Status,
    },
    /// The agent refused or failed an operation on one container.
    #[error("pod {id}: {op} container {container}: {}", .status.message())]
    Container {
        /// The pod.
        id: String,
        /// The container.
        container: String,
        /// What was asked.
        op: ContainerOp,
        /// The agent's answer.
        status: tonic::Status,
    },
    /// A stream to a container (its stdin, an exec's input) has ended: the process is gone.
    #[error("pod {id}: {op} container {container}: the stream has ended")]
    Ended {
        /// The pod.
        id: String,
        /// The container.
        container: String,
        /// What was asked.
        op: ContainerOp,
    },
    /// Every disk slot holds an image already.
    #[error("pod {id}: no free disk slot for image {serial} (the pod booted with {slots})")]
    NoSlot {
        /// The pod.
        id: String,
        /// The image's disk serial.
        serial: String,
        /// How many slots the pod has.
        slots: usize,
    },
    /// The container's OCI spec was refused or could not be translated.
    #[error("pod {id}: container {container}: {source}")]
    Oci {
        /// The pod.
        id: String,
        /// The container.
        container: String,
        /// Why.
        source: Box<OciError>,
    },
    /// A host volume of the container could not be read.
    #[error("pod {id}: container {container}: {source}")]
    HostVolume {
        /// The pod.
        id: String,
        /// The container.
        container: String,
        /// Why.
        source: HostVolumeError,
    },
    /// The pod's network could not be plumbed on the host.
    #[error("pod {id}: network: {source}")]
    Net {
        /// The pod.
        id: String,
        /// Why.
        source: NetError,
    },
    /// The netns given for the pod is not one CNI made.
    #[error("pod {id}: netns {netns} is refused: {why}")]
    NetnsRefused {
        /// The pod.
        id: String,
        /// The netns path.
        netns: PathBuf,
        /// Why.
        why: String,
    },
    /// The VM could not be started inside the pod's netns.
    #[error("pod {id}: enter netns {netns}: {source}")]
    Netns {
        /// The pod.
        id: String,
        /// The netns path.
        netns: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The netns's loopback could not be steered to the guest's (port-forward).
    #[error("pod {id}: port-forward: {source}")]
    PortForward {
        /// The pod.
        id: String,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM could not swap a disk slot's backing file.
    #[error("pod {id}: swap disk slot: {source}")]
    Slot {
        /// The pod.
        id: String,
        /// Why.
        source: crate::vmm_process::VmProcessError,
    },
}

impl PodError {
    /// Whether the agent answered "not found" (an unknown container, or a
    /// signal for a process that already exited).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    /// The agent's status code, when the agent answered with an error (for a caller that maps
    /// it, e.g. to a ttrpc code).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            PodError::Agent { status, .. } | PodError::Container { status, .. } => {
                Some(status.code())
            }
            _ => None,
        }
    }
}
