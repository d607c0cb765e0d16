//! Per-thread seccomp allow-lists for the VMM (x86_64), built with `seccompiler`.
//!
//! Three kinds of thread, three lists ([`ThreadKind`]), each the syscalls common to any thread of
//! a Rust program plus what that thread's own work needs, with `ioctl` narrowed to the request
//! numbers it makes, `socket` to AF_UNIX, and `mmap`/`mprotect` to non-executable memory. Any
//! other syscall kills the whole VMM (`SECCOMP_RET_KILL_PROCESS`): the host sees SIGSYS.
//!
//! How the VMM uses them: compile all three with [`Filters::compile`] early (compiling allocates),
//! then each thread applies its own with [`apply`] as the first thing it does: a vCPU thread
//! before its first KVM_RUN, the event loop once its `EventManager` exists, the signal-waiting
//! thread the [`ThreadKind::Main`] one; the main thread applies its list last, once every thread
//! is spawned (the main list has no `clone`: a filter is inherited by threads spawned after it,
//! and filters stack). `no_new_privs` (set by [`crate::enter`]) is what lets an unprivileged
//! process install them.
//!
//! Tightening them (the lists below are a first reading of the VMM's code): build the filters
//! with [`Mode::Log`] in a test bed, run a workload, and read which syscalls were not on a list:
//! each is allowed and logged by the kernel as an audit record (`dmesg | grep 'type=1326'`, or
//! `audit.log`) naming the thread (`comm="vcpu0"`) and the number (`syscall=NN`); or trace the
//! whole VMM with `strace -f -qq -o trace.txt vpod-vmm ...` and count per thread (each thread
//! names itself with `prctl(PR_SET_NAME)` early in the trace). See the crate README.

mod lists;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use lists::{allowed, Allowed, ArgRule, ThreadKind};

/// What a syscall off the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kills the process (SIGSYS). The only mode for production.
    Enforce,
    /// Test beds only: allowed and logged by the kernel (`SECCOMP_RET_LOG`), to record what a
    /// thread needs that the list lacks.
    Log,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected a list or the architecture.
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        /// The list.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The running architecture has no lists.
    #[error("no seccomp lists for {0}")]
    Arch(&'static str),
    /// The kernel refused the filter (needs no_new_privs or CAP_SYS_ADMIN).
    #[error("installing a seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

/// The compiled filter of each thread kind.
#[derive(Debug, Clone)]
pub struct Filters {
    /// For [`ThreadKind::Main`].
    pub main: BpfProgram,
    /// For [`ThreadKind::EventLoop`].
    pub event_loop: BpfProgram,
    /// For [`ThreadKind::Vcpu`].
    pub vcpu: BpfProgram,
}

impl Filters {
    /// Compiles the three lists.
    pub fn compile(mode: Mode) -> Result<Self, SeccompError> {
        Ok(Self {
            main: program(ThreadKind::Main, mode)?,
            event_loop: program(ThreadKind::EventLoop, mode)?,
            vcpu: program(ThreadKind::Vcpu, mode)?,
        })
    }

    /// The program for `kind`.
    pub fn get(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Vcpu => &self.vcpu,
        }
    }
}

/// The BPF program of one thread kind.
pub fn program(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let build = |source| SeccompError::Build { kind, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in allowed(kind) {
        // Each syscall is listed once per kind (a unit test checks): an empty rule list allows it
        // whatever its arguments, else any one rule (all of its conditions) must match.
        let entry = rules.entry(a.nr).or_default();
        let conds: Vec<Vec<SeccompCondition>> = match a.arg {
            ArgRule::Any => continue,
            ArgRule::Eq(index, values) => values
                .iter()
                .map(|v| {
                    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v)
                })
                .map(|c| c.map(|c| vec![c]))
                .collect::<Result<_, _>>()
                .map_err(build)?,
            ArgRule::MaskClear(index, mask) => vec![vec![SeccompCondition::new(
                index,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(mask),
                0,
            )
            .map_err(build)?]],
        };
        for c in conds {
            entry.push(SeccompRule::new(c).map_err(build)?);
        }
    }
    let mismatch = match mode {
        Mode::Enforce => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Keeps every thread's allocations on glibc's main arena (`M_ARENA_MAX` = 1). Call it first
/// thing in `main`, before any thread exists.
///
/// Why: glibc gives each other thread an arena of its own (an mmap'd heap), and the first time
/// one shrinks it reads `/proc/sys/vm/overcommit_memory`, an `openat` that only the main
/// thread's list allows: a device thread that freed a few MiB was a seccomp kill of the whole
/// VMM. The main arena trims with `brk`, which every list allows; the VMM's threads allocate
/// little on their hot paths, so sharing one arena costs no contention that matters. Returns
/// whether glibc took the setting.
pub fn one_arena() -> bool {
    // SAFETY: mallopt only sets an allocator parameter; no memory is touched.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

/// Installs `prog` on the calling thread (and the threads it spawns afterwards).
pub fn apply(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests;
