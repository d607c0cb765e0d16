//! The container process's own setup, after the root: session and TTY,
//! rlimits, seccomp, capabilities, identity, working directory, `execve`.

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::config::ProcessConfig;
use super::error::InitError;
use crate::container::seccomp;

/// This process's OOM score file.
pub const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// The container process's OOM score: the spec's, else `inherited` (the
/// agent's). Going below the floor a privileged writer set needs
/// CAP_SYS_RESOURCE: refused (EACCES, or EPERM elsewhere), the value is
/// clamped up to `inherited` (raising needs nothing).
pub fn set_oom_score_adj(want: Option<i32>, inherited: &str) {
    let inherited_v: i32 = inherited.parse().unwrap_or(0);
    let want = want.map_or(inherited_v, |w| w.clamp(-1000, 1000));
    match std::fs::write(OOM_SCORE_ADJ, want.to_string()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            let _ = std::fs::write(OOM_SCORE_ADJ, want.max(inherited_v).to_string());
        }
        _ => {}
    }
}

/// Identity, limits and confinement, then `execve`: returns only with an
/// error.
pub fn exec(p: &ProcessConfig) -> InitError {
    match exec_process(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn exec_process(p: &ProcessConfig) -> Result<Never, InitError> {
    nix::unistd::setsid().map_err(InitError::Setsid)?;
    if p.tty {
        // SAFETY: ioctl on stdin, which is the pty's slave side.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(InitError::ControllingTty(std::io::Error::last_os_error()));
        }
    }
    for (kind, soft, hard) in &p.rlimits {
        let res = rlimit_resource(kind).ok_or_else(|| InitError::UnknownRlimit(kind.clone()))?;
        nix::sys::resource::setrlimit(res, *soft, *hard).map_err(|source| {
            InitError::Setrlimit {
                kind: kind.clone(),
                soft: *soft,
                hard: *hard,
                source,
            }
        })?;
    }
    if !p.no_new_privileges {
        // Installed while still root with CAP_SYS_ADMIN, as the kernel requires without
        // no_new_privs; the filter must then allow what follows (as with runc).
        seccomp::install(&p.seccomp.programs())?;
    }

    let keep = match &p.capabilities {
        None => caps::all(),
        Some(names) => {
            let mut set = caps::CapsHashSet::new();
            for n in names {
                let cap: caps::Capability = n
                    .to_uppercase()
                    .parse()
                    .map_err(|_| InitError::UnknownCapability(n.clone()))?;
                set.insert(cap);
            }
            set
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|source| InitError::DropBounding { cap, source })?;
        }
    }
    if p.uid != 0 {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|source| InitError::Setgroups {
        groups: groups.clone(),
        source,
    })?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|source| InitError::Setgid { gid: p.gid, source })?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|source| InitError::Setuid { uid: p.uid, source })?;
    // Effective first: it must stay a subset of permitted at every step.
    for (set, name) in [
        (caps::CapSet::Effective, "effective"),
        (caps::CapSet::Permitted, "permitted"),
        (caps::CapSet::Inheritable, "inheritable"),
    ] {
        caps::set(None, set, &keep).map_err(|source| InitError::SetCaps { set: name, source })?;
    }
    if p.uid != 0 {
        for cap in &keep {
            let _ = caps::raise(None, caps::CapSet::Ambient, *cap);
        }
    }
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(InitError::NoNewPrivs(std::io::Error::last_os_error()));
        }
    }

    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    nix::unistd::chdir(cwd).map_err(|source| InitError::Cwd {
        cwd: cwd.to_owned(),
        source,
    })?;

    let arg0 = p.args.first().ok_or(InitError::NoCommand)?;
    let path = find_executable(arg0, &p.env)?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| InitError::NulInArg(a.clone())))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = p
        .env
        .iter()
        .map(|e| CString::new(e.as_str()).map_err(|_| InitError::NulInEnv(e.clone())))
        .collect::<Result<_, _>>()?;
    if p.no_new_privileges {
        // As late as possible: a profile need allow no more than execve of what we do.
        seccomp::install(&p.seccomp.programs())?;
    }
    let source = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(InitError::Exec {
        path: path.to_string_lossy().into_owned(),
        source,
    })
}

/// `arg0` as `execvp` would find it, but in the container's PATH (glibc's
/// execvpe searches the caller's environment, not the new one).
fn find_executable(arg0: &str, env: &[String]) -> Result<CString, InitError> {
    let cs = |s: &str| CString::new(s).map_err(|_| InitError::NulInPath(s.to_owned()));
    if arg0.contains('/') {
        return cs(arg0);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{dir}/{arg0}");
        if nix::unistd::access(cand.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
            && Path::new(&cand).is_file()
        {
            return cs(&cand);
        }
    }
    Err(InitError::NotFound {
        arg0: arg0.to_owned(),
        path: path.to_owned(),
    })
}

fn rlimit_resource(kind: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match kind.to_uppercase().as_str() {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// Whether an rlimit name is one the container process can set.
pub fn known_rlimit(kind: &str) -> bool {
    rlimit_resource(kind).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP_SYS_RESOURCE (bit 24) in this process's effective set.
    fn has_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        eff & (1 << 24) != 0
    }

    #[test]
    fn a_refused_oom_score_is_clamped_not_fatal() {
        let read = || -> i32 {
            std::fs::read_to_string(OOM_SCORE_ADJ)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let orig = read();
        if orig >= 999 {
            return; // no room to raise; nothing to learn here
        }
        // As in the guest: the process sits below the value it inherited
        // (the supervisor's -1000 vs the agent's), and the spec asks lower.
        let inherited = orig + 1;
        let want = (orig - 1).max(-1000);
        set_oom_score_adj(Some(want), &inherited.to_string());
        if has_sys_resource() {
            assert_eq!(read(), want);
        } else {
            // This host (and CI) lacks the capability: lowering is refused
            // and the value is clamped up to the inherited one, not left.
            assert_eq!(read(), inherited);
        }
        // Best effort: lowering back needs the capability.
        let _ = std::fs::write(OOM_SCORE_ADJ, orig.to_string());
    }

    #[test]
    fn finds_executables_in_the_given_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_owned()];
        assert_eq!(
            find_executable("sh", &env).unwrap().to_str().unwrap(),
            "/bin/sh"
        );
        let e = find_executable("no-such-tool-here", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        assert_eq!(
            find_executable("./x", &env).unwrap().to_str().unwrap(),
            "./x"
        );
    }
}
