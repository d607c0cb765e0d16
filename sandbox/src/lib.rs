//! vpod pod sandboxes, host side.
//!
//! - [`policy`]: what a pod's OCI specs (as containerd or vpod's CRI server hands them) may ask
//!   for; host namespaces and hostPath volumes are refused with the field to change.
//! - [`mounts`]: how each mount reaches the guest, read from kubelet's path layout.
//! - [`sizing`]: the pod VM's vCPUs and memory from its containers' limits.

pub mod mounts;
pub mod policy;
pub mod sizing;

pub use mounts::{MountClassifier, MountError, MountKind};
pub use policy::{check_spec, CheckedSpec, PolicyError};
pub use sizing::{Limits, VmSize};
