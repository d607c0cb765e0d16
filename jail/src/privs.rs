//! What the process gives up: rlimits, open fds, root (ids), capabilities, the right to gain
//! privileges again, and dumpability.

use std::os::fd::RawFd;

use crate::error::{cvt, JailError};
use crate::spec::Rlimits;

/// Sets soft = hard for NOFILE, FSIZE, NPROC, and CORE to 0.
pub(crate) fn set_rlimits(r: &Rlimits) -> Result<(), JailError> {
    let limits = [
        (libc::RLIMIT_NOFILE, r.nofile, "setrlimit(RLIMIT_NOFILE)"),
        (
            libc::RLIMIT_FSIZE,
            r.fsize.unwrap_or(libc::RLIM_INFINITY),
            "setrlimit(RLIMIT_FSIZE)",
        ),
        (libc::RLIMIT_NPROC, r.nproc, "setrlimit(RLIMIT_NPROC)"),
        (libc::RLIMIT_CORE, 0, "setrlimit(RLIMIT_CORE)"),
    ];
    for (resource, value, step) in limits {
        set_rlimit(resource, value).map_err(|_| JailError::sys(step))?;
    }
    Ok(())
}

pub(crate) fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), ()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    cvt(unsafe { libc::setrlimit(resource, &lim) })
        .map(drop)
        .map_err(drop)
}

/// Closes every fd not in `keep` (close_range over the gaps).
pub(crate) fn close_fds_except(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep.iter().map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > first {
            close_range(first, k - 1)?;
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), JailError> {
    // SAFETY: close_range only closes fd numbers of this process; nothing here borrows them
    // (the caller owns the whole fd table at this point: single-threaded, pre-VMM).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return Err(JailError::sys("close_range"));
    }
    // Kernels before 5.9: one close per number up to the NOFILE limit.
    // SAFETY: getdtablesize has no arguments.
    let max = unsafe { libc::getdtablesize() }.max(0) as u32;
    for fd in first..=last.min(max) {
        // SAFETY: as above; EBADF for numbers that aren't open is expected and ignored.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

/// `CAP_KILL` (capability 5) as a mask bit: one bit per capability number.
pub(crate) const CAP_KILL: u64 = 1 << 5;

/// Becomes `uid`/`gid` with no supplementary groups and only the capabilities in `keep` (a mask;
/// 0 for the VMM): the bounding set is emptied first (that needs CAP_SETPCAP, so while still
/// root), ambient cleared, and effective/permitted/inheritable set explicitly after the switch.
pub(crate) fn drop_to(uid: u32, gid: u32, keep: u64) -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL past the last one ends it.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::sys("prctl(PR_CAPBSET_DROP)"));
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if ret != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(JailError::sys("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    if keep != 0 {
        // Keep permitted caps across the uid switch (only those in `keep` are set again below).
        // SAFETY: plain prctl with an integer argument.
        cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
            .map_err(|_| JailError::sys("prctl(PR_SET_KEEPCAPS)"))?;
    }
    // SAFETY: setgroups with size 0 reads no memory.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) })
        .map_err(|_| JailError::sys("setgroups([])"))?;
    // SAFETY: plain id syscalls.
    cvt(unsafe { libc::setresgid(gid, gid, gid) }).map_err(|_| JailError::sys("setresgid"))?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(uid, uid, uid) }).map_err(|_| JailError::sys("setresuid"))?;
    set_caps(keep)?;
    if keep != 0 {
        // SAFETY: plain prctl with an integer argument.
        cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })
            .map_err(|_| JailError::sys("prctl(PR_SET_KEEPCAPS)"))?;
    }
    Ok(())
}

/// capset(2) v3: effective = permitted = `mask`, inheritable = 0.
fn set_caps(mask: u64) -> Result<(), JailError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |i: u32| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(i),
        permitted: word(i),
        inheritable: 0,
    });
    // SAFETY: header and a two-element data array in the v3 layout, valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if ret != 0 {
        return Err(JailError::sys("capset"));
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS` (no setuid/file-capability gains on exec; also what lets an
/// unprivileged thread install seccomp filters) and `PR_SET_DUMPABLE` 0 (no core dumps, no
/// ptrace attach by the same uid, /proc/PID files owned by root).
pub(crate) fn lock_down() -> Result<(), JailError> {
    // SAFETY: plain prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(|_| JailError::sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    // SAFETY: as above.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
        .map_err(|_| JailError::sys("prctl(PR_SET_DUMPABLE)"))?;
    Ok(())
}

/// `sethostname` in the (new) UTS namespace.
pub(crate) fn set_hostname(name: &str) -> Result<(), JailError> {
    // SAFETY: the pointer and length describe `name`'s bytes for the duration of the call.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
        .map_err(|_| JailError::sys("sethostname"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_kill_is_bit_5() {
        assert_eq!(CAP_KILL, 32);
    }
}
