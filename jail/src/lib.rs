//! `vpod-jail`: the VMM in its own jail, one unprivileged, seccomp-filtered process per pod.
//!
//! Two halves:
//! - the host starts the `vpod-vmm` binary with [`spawn::configure`] (or
//!   [`spawn::command_pre_exec`]): new mount, IPC, UTS and PID namespaces, fds passed in;
//! - the VMM calls [`enter`] while still single-threaded, once it has read the [`JailSpec`] the
//!   host sent it (`vpod_vmm::control::Launch`) and opened the host files it needs,
//!   and, once its threads exist, applies the [`seccomp`] list of each thread.
//!
//! What [`enter`] does, in this order: the pod's cgroup is created and limited, then the fork
//! (straight into the cgroup on v2); in the child: parent-death signal; the cgroup joined (v1);
//! PID 1 check; the network namespace; fresh mount/UTS/IPC namespaces; private mount tree; a
//! tmpfs root holding only the spec's entries (files and directories bound, devices as nodes
//! owned by the pod; /proc if asked); `pivot_root`, old root detached, root read-only; hostname;
//! every fd closed but the keep-list; rlimits (NOFILE, FSIZE, NPROC, CORE 0); bounding and
//! ambient capabilities dropped; no supplementary groups; the pod's gid and uid; no capabilities
//! left; `no_new_privs`; not dumpable.
//!
//! # The waiter
//! A process can't move itself into a new PID namespace, only its children, so [`enter`] forks:
//! the child is jailed and is PID 1 of the pod's PID namespace (when it dies, the kernel kills
//! whatever else lives there). The parent stays outside as a small waiter: it forwards SIGTERM and
//! SIGINT, holds [`JailSpec::waiter_fds`] (the [`ids`] lease) and exits as the child did (code, or
//! the same signal re-raised), so the host's `waitpid` on the process it spawned tells it how the
//! VMM ended. If the waiter is killed, the child gets SIGKILL (parent-death signal). The waiter
//! itself runs as the pod's uid with only CAP_KILL, `no_new_privs`, not dumpable.
//!
//! A PID 1 ignores signals it has no handler for (the kernel's rule for namespace inits, even from
//! outside): the VMM must block SIGTERM/SIGINT and `sigwait` for them, as `vpod-vmm` does.
//!
//! After the VMM is gone, the host calls [`cleanup`] (the cgroup and the root directory).

#![warn(missing_docs)]

mod cgroup;
mod enter;
mod error;
pub mod ids;
mod mounts;
mod privs;
#[cfg(target_arch = "x86_64")]
pub mod seccomp;
pub mod spawn;
mod spec;
mod waiter;

pub use cgroup::{dirs as cgroup_dirs, set_memory_max, version as cgroup_version};
pub use enter::{enter, Entered};
pub use error::JailError;
pub use spec::{Bind, CgroupSpec, CgroupVersion, JailSpec, Rlimits};

/// Removes what a jail leaves on the host once its VMM is gone: the pod's cgroup (killing any
/// process still in it) and the root directory (an empty mount point on the host: the tmpfs lived
/// in the VMM's own mount namespace). Missing pieces are not an error, so it can run twice.
pub fn cleanup(spec: &JailSpec) -> Result<(), JailError> {
    if let Some(cg) = &spec.cgroup {
        cgroup::remove(cg)?;
    }
    match std::fs::remove_dir(&spec.root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JailError::Cleanup {
            path: spec.root.clone(),
            source,
        }),
    }
}
