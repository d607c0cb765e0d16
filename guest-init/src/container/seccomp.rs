//! The RuntimeDefault seccomp profile: the syscalls a container must not make
//! fail with EPERM, everything else is allowed. The list follows what
//! Docker's and containerd's default profiles refuse to a container without
//! CAP_SYS_ADMIN (kernel modules, kexec, keyrings, bpf, mounts and
//! namespaces, clocks, swap, reboot, perf, userfaultfd). It is a deny list,
//! not their allow list: a syscall newer than this list is allowed.

use std::collections::BTreeMap;

use seccompiler::{BackendError, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why the filter could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules did not make a filter.
    #[error("build the seccomp filter: {0}")]
    Build(#[source] BackendError),
    /// The filter did not compile to BPF.
    #[error("compile the seccomp filter: {0}")]
    Compile(#[source] BackendError),
    /// The kernel refused it.
    #[error("install the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
}

/// Refused syscalls (x86_64 numbers).
pub const DENIED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_settimeofday,
    libc::SYS_adjtimex,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_init_module,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_request_key,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_pivot_root,
    libc::SYS_nfsservctl,
    libc::SYS_open_by_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_ustat,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_vhangup,
];

/// The compiled filter.
pub fn runtime_default() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

/// Installs [`runtime_default`] on the calling thread. Unlike
/// `seccompiler::apply_filter` it does not set no_new_privs: the caller still
/// holds CAP_SYS_ADMIN, and no_new_privs is the spec's choice.
pub fn install_runtime_default() -> Result<(), SeccompError> {
    let prog = runtime_default()?;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program; `prog` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles() {
        let prog = runtime_default().unwrap();
        assert!(prog.len() > DENIED.len());
    }
}
