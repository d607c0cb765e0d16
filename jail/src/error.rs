//! Why entering (or cleaning up) a jail failed: one variant per step, with the path it touched.

use std::io;
use std::path::PathBuf;

/// A failed step of [`crate::enter`] or [`crate::cleanup`].
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The spec can't describe a jail (checked before anything changes).
    #[error("invalid jail spec: {0}")]
    InvalidSpec(String),
    /// `enter` must run before the process has threads: it forks.
    #[error("the process has {0} threads; enter the jail before spawning any")]
    NotSingleThreaded(usize),
    /// The spec expects a new PID namespace (PID 1 after the fork) and there is none: the VMM was
    /// not started through [`crate::spawn`].
    #[error("not PID 1 of a new PID namespace (pid {0}); spawn the VMM with vpod_jail::spawn")]
    NoPidNamespace(libc::pid_t),
    /// The waiter died before the jailed child could arm its parent-death signal.
    #[error("the waiter (parent) is gone")]
    ParentGone,
    /// Reading `/proc/self/...` or another kernel file that should always be there.
    #[error("reading {path}: {source}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A process-level syscall without a path (fork, pipe, prctl, setrlimit, setresuid, ...).
    #[error("{step}: {source}")]
    Sys {
        /// What was being done.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Preparing the jail root directory on the host (create, check empty).
    #[error("jail root {path}: {what}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A mount step: making the tree private, the root tmpfs, a bind, a remount, /proc.
    #[error("{step} {path}: {source}")]
    Mount {
        /// Which mount step.
        step: &'static str,
        /// The mount point (or source) involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A bind source that doesn't exist or can't be stat'ed.
    #[error("bind source {path}: {source}")]
    BindSource {
        /// The host path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `pivot_root` into the jail root, or detaching the old root.
    #[error("{step} into {path}: {source}")]
    Pivot {
        /// Which step.
        step: &'static str,
        /// The jail root.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A cgroup file or directory.
    #[error("cgroup {step} {path}: {source}")]
    Cgroup {
        /// Which step (mkdir, write memory.max, join, ...).
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A controller the pod's cgroup needs is not available under its parent and can't be enabled.
    #[error("cgroup controller {controller} not available in {path} (not in cgroup.controllers)")]
    MissingController {
        /// `memory` or `pids`.
        controller: &'static str,
        /// The cgroup whose `cgroup.controllers` lacks it.
        path: PathBuf,
    },
    /// No cgroup hierarchy where the spec says.
    #[error("no cgroup v2 or v1 (memory, pids) hierarchy under {0}")]
    NoCgroupFs(PathBuf),
    /// Opening or joining the network namespace.
    #[error("network namespace {step} {path}: {source}")]
    Netns {
        /// open or setns.
        step: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Removing a jail's leftovers.
    #[error("cleanup: removing {path}: {source}")]
    Cleanup {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl JailError {
    /// A process-level syscall failure, with errno from the last call.
    pub(crate) fn sys(step: &'static str) -> Self {
        Self::Sys {
            step,
            source: io::Error::last_os_error(),
        }
    }
}

/// `-1` from a libc call as `Err(errno)`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
