//! vpod pod sandboxes, host side.
//!
//! - [`policy`]: what a pod's OCI specs (as containerd hands them, or `vpod run` makes them from
//!   its flags) may ask for; host namespaces and hostPath volumes are refused with the field to
//!   change.
//! - [`mounts`]: how each mount reaches the guest, read from kubelet's path layout.
//! - [`sizing`]: the pod VM's vCPUs and memory from its containers' limits.
//! - [`vmm_process`]: a pod's VMM as its own jailed process ([`VmProcess`]) and its settings.
//! - [`pod`]: a booted pod: its microVM (a [`VmProcess`]), state directory and the front of its
//!   agent ([`Pod`], [`PodAgent`]), through which every container operation goes.
//! - [`oci`]: a container's OCI spec turned into the agent's create request and volumes.
//! - [`ephemeral`]: the pod's private ext4 disk; [`volumes`]: host dirs pushed into the guest.
//! - [`net`]: the pod's CNI netns joined to its VM; [`portforward`]: the netns's loopback
//!   steered to the guest's; [`defaults`]: what a container gets when nobody says otherwise.

#![warn(missing_docs)]

pub mod defaults;
pub mod ephemeral;
pub mod mounts;
pub mod net;
pub mod oci;
pub mod pod;
pub mod policy;
pub mod portforward;
pub mod seccomp;
pub mod sizing;
pub mod vmm_process;
pub mod volumes;

pub use mounts::{MountClassifier, MountError, MountKind};
pub use pod::{
    CreateOptions, Exec, ExecControl, ImageDisk, Output, OutputEvent, Pod, PodAgent, PodConfig,
    PodError, Stdin, DEFAULT_HOTPLUG_MIB, GROW_TIMEOUT,
};
pub use policy::{check_spec, CheckedSpec, PolicyError};
pub use sizing::{Limits, VmSize};
pub use vmm_process::{VmProcess, VmmProcessConfig};
