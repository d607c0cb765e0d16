//! The container's own side: `vpod-init __container` runs here, in a fresh
//! process the agent spawned into the container's cgroup with the container's
//! stdio. It enters (or joins) the container's namespaces, forks the
//! container process, and stays as its parent: it forwards signals to it and
//! reports its pid and exit status to the agent.
//!
//! Why a separate exec and not `pre_exec`: a new PID namespace only applies
//! to children of the process that unshares it, and mount namespace setns
//! needs a single-threaded process. The agent is neither.
//!
//! File descriptors on entry: 0-2 the container's stdio, [`ERROR_FD`] a pipe
//! for a start error (closed unread when `execve` succeeds), [`REPORT_FD`] a
//! pipe for "pid N" and "exit CODE SIGNAL" lines.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::seccomp;

/// Argument that makes vpod-init run [`main`].
pub const CONTAINER_INIT_ARG: &str = "__container";
/// Environment variable carrying the JSON [`InitConfig`].
pub const CONFIG_ENV: &str = "VPOD_CONTAINER_INIT";
pub const ERROR_FD: RawFd = 3;
pub const REPORT_FD: RawFd = 4;

/// Everything the container's side needs, decided by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub namespaces: Namespaces,
    pub process: ProcessConfig,
}

/// New namespaces and a root to set up, or the namespaces of a running
/// container to join (exec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Namespaces {
    New(RootConfig),
    Join { pid: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootConfig {
    /// The overlay the agent mounted.
    pub rootfs: PathBuf,
    /// The container's devpts instance (the agent allocates its ptys there).
    pub pts: PathBuf,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub read_only_rootfs: bool,
    pub shm_size_bytes: u64,
    pub privileged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    /// A guest path (bind) or None for a fresh tmpfs.
    pub source: Option<PathBuf>,
    pub destination: String,
    pub read_only: bool,
    pub tmpfs_size_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub tty: bool,
    /// `None`: every capability (privileged).
    pub capabilities: Option<Vec<String>>,
    pub rlimits: Vec<(String, u64, u64)>,
    pub no_new_privileges: bool,
    pub seccomp: bool,
    /// `None`: the agent's own.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// Entry point of `vpod-init __container`. Never returns.
pub fn main() -> ! {
    // The pipes must not reach the container process.
    for fd in [ERROR_FD, REPORT_FD] {
        // SAFETY: fcntl on an fd number; a bad fd only returns EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let cfg: InitConfig = match std::env::var(CONFIG_ENV)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => fail(&format!("container init config: {e}")),
    };
    std::env::remove_var(CONFIG_ENV);

    // This supervisor sits in the container's cgroup: the OOM killer must
    // pick the container's processes, never it (its death would orphan them
    // and lose their exit). Written before /proc may become the container's.
    let oom_adj = std::fs::read_to_string(OOM_SCORE_ADJ).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(OOM_SCORE_ADJ, "-1000");

    match &cfg.namespaces {
        Namespaces::New(_) => {
            let flags = CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWPID;
            if let Err(e) = unshare(flags) {
                fail(&format!("unshare namespaces: {e}"));
            }
        }
        Namespaces::Join { pid } => {
            // mnt last: after it, /proc is the container's.
            for ns in ["ipc", "uts", "pid", "mnt"] {
                let path = format!("/proc/{pid}/ns/{ns}");
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) => fail(&format!("open {path}: {e} (has the container exited?)")),
                };
                if let Err(e) = setns(file, CloneFlags::empty()) {
                    fail(&format!("join {ns} namespace of pid {pid}: {e}"));
                }
            }
        }
    }

    // Signals arrive through sigwait below; the child restores the mask.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old));

    // SAFETY: this process is single-threaded (a fresh exec that started no
    // threads), so the child may do anything.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            // SAFETY: REPORT_FD belongs to the parent's half of this process.
            unsafe { libc::close(REPORT_FD) };
            set_oom_score_adj(cfg.process.oom_score_adj, oom_adj.trim());
            let err = child(&cfg);
            fail(&err)
        }
        Ok(ForkResult::Parent { child }) => {
            // SAFETY: the child holds the error pipe now; our copy must close
            // so the agent sees EOF when the child execs.
            unsafe { libc::close(ERROR_FD) };
            supervise(child)
        }
    }
}

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// The container process's OOM score: the spec's, else `inherited` (the
/// agent's). Going below the floor a privileged writer set needs
/// CAP_SYS_RESOURCE: refused (EACCES, or EPERM elsewhere), the value is
/// clamped up to `inherited` (raising needs nothing).
fn set_oom_score_adj(want: Option<i32>, inherited: &str) {
    let inherited_v: i32 = inherited.parse().unwrap_or(0);
    let want = want.map_or(inherited_v, |w| w.clamp(-1000, 1000));
    match std::fs::write(OOM_SCORE_ADJ, want.to_string()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            let _ = std::fs::write(OOM_SCORE_ADJ, want.max(inherited_v).to_string());
        }
        _ => {}
    }
}

/// Forwards signals to the container process until it exits, then exits
/// with its status.
fn supervise(child: Pid) -> ! {
    report(&format!("pid {}\n", child.as_raw()));
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == Signal::SIGCHLD {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    report(&format!("exit {code} 0\n"));
                    std::process::exit(code)
                }
                Ok(WaitStatus::Signaled(_, s, _)) => {
                    report(&format!("exit {} {}\n", 128 + s as i32, s as i32));
                    std::process::exit(128 + s as i32)
                }
                _ => continue,
            }
        }
        let _ = kill(child, sig);
    }
}

fn report(line: &str) {
    // SAFETY: REPORT_FD is ours for the life of this process.
    let fd = unsafe { BorrowedFd::borrow_raw(REPORT_FD) };
    let _ = nix::unistd::write(fd, line.as_bytes());
}

/// Writes a start error for the agent and exits 127.
fn fail(msg: &str) -> ! {
    // SAFETY: ERROR_FD is the error pipe handed over by the agent; taking
    // ownership closes it at exit anyway.
    let mut f = unsafe { std::fs::File::from_raw_fd(ERROR_FD) };
    let _ = f.write_all(msg.as_bytes());
    // SAFETY: _exit skips atexit handlers, which belong to the agent image.
    unsafe { libc::_exit(127) }
}

/// The container process: returns only with an error.
fn child(cfg: &InitConfig) -> String {
    if let Namespaces::New(root) = &cfg.namespaces {
        if let Err(e) = setup_root(root) {
            return e;
        }
    }
    match exec_process(&cfg.process) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            fstype.or(src).unwrap_or("bind"),
            target.display()
        )
    })
}

fn setup_root(root: &RootConfig) -> Result<(), String> {
    let r = &root.rootfs;
    let nosuid = MsFlags::MS_NOSUID;
    let nodev = MsFlags::MS_NODEV;
    let noexec = MsFlags::MS_NOEXEC;
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    let proc_ = secure_dir(r, "/proc")?;
    mnt(
        Some("proc"),
        &proc_,
        Some("proc"),
        nosuid | nodev | noexec,
        None,
    )?;
    let sys = secure_dir(r, "/sys")?;
    let sys_ro = if root.privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    mnt(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        nosuid | nodev | noexec | sys_ro,
        None,
    )?;
    let dev = secure_dir(r, "/dev")?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        nosuid,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|e| format!("mknod {}: {e}", path.display()))?;
        // mknod obeys the umask; the nodes must be usable by any uid.
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    let pts_src = root.pts.to_string_lossy().into_owned();
    mnt(Some(&pts_src), &pts, None, MsFlags::MS_BIND, None)?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    let shm_size = if root.shm_size_bytes == 0 {
        64 << 20
    } else {
        root.shm_size_bytes
    };
    mnt(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid | nodev | noexec,
        Some(&format!("mode=1777,size={shm_size}")),
    )?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }

    for m in &root.mounts {
        let is_file = m
            .source
            .as_ref()
            .is_some_and(|s| s.metadata().map(|md| md.is_file()).unwrap_or(false));
        let dest = if is_file {
            secure_file(r, &m.destination)?
        } else {
            secure_dir(r, &m.destination)?
        };
        match &m.source {
            Some(src) => {
                let src = src.to_string_lossy();
                mnt(
                    Some(&src),
                    &dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                if m.read_only {
                    mnt(
                        None,
                        &dest,
                        None,
                        MsFlags::MS_BIND
                            | MsFlags::MS_REMOUNT
                            | MsFlags::MS_RDONLY
                            | nosuid
                            | nodev,
                        None,
                    )?;
                }
            }
            None => {
                let size = if m.tmpfs_size_bytes > 0 {
                    format!(",size={}", m.tmpfs_size_bytes)
                } else {
                    String::new()
                };
                let ro = if m.read_only {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                mnt(
                    Some("tmpfs"),
                    &dest,
                    Some("tmpfs"),
                    nosuid | nodev | ro,
                    Some(&format!("mode=1777{size}")),
                )?;
            }
        }
    }

    if !root.privileged {
        for p in &root.masked_paths {
            let Ok(path) = resolve_in(r, p) else { continue };
            match path.symlink_metadata() {
                Ok(md) if md.is_dir() => mnt(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )?,
                Ok(_) => mnt(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)?,
                Err(_) => {}
            }
        }
        for p in &root.readonly_paths {
            let Ok(path) = resolve_in(r, p) else { continue };
            if path.symlink_metadata().is_err() {
                continue;
            }
            let path_s = path.to_string_lossy().into_owned();
            mnt(
                Some(&path_s),
                &path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            mnt(
                None,
                &path,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | nosuid
                    | nodev
                    | noexec,
                None,
            )?;
        }
    }

    if !root.hostname.is_empty() {
        nix::unistd::sethostname(&root.hostname)
            .map_err(|e| format!("set hostname {}: {e}", root.hostname))?;
    }

    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // it leaves only the container's tree.
    nix::unistd::chdir(r).map_err(|e| format!("chdir {}: {e}", r.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if root.read_only_rootfs {
        mnt(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), String> {
    match nix::unistd::mkdir(p, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("mkdir {}: {e}", p.display())),
    }
}

/// `path` (absolute in the container) as a host path under `root`, with
/// every symlink on the way resolved as the container would: an absolute
/// target restarts at `root`, `..` never climbs above it. The image and the
/// other containers' volumes are not trusted to point inside.
///
/// Written here because no crate in the tree does scoped resolution; it only
/// runs before the container starts, so nothing inside can race it.
pub fn resolve_in(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut out = root.to_path_buf();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                if out != root {
                    out.pop();
                }
                continue;
            }
            _ => {}
        }
        let next = out.join(&comp);
        match next.symlink_metadata() {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("{path}: too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&next)
                    .map_err(|e| format!("readlink {}: {e}", next.display()))?;
                let t = target.as_os_str().as_bytes();
                if t.starts_with(b"/") {
                    out = root.to_path_buf();
                }
                for c in String::from_utf8_lossy(t)
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                {
                    pending.push(c.to_owned());
                }
            }
            _ => out = next,
        }
    }
    Ok(out)
}

/// [`resolve_in`], then makes the directories on the way.
fn secure_dir(root: &Path, path: &str) -> Result<PathBuf, String> {
    let p = resolve_in(root, path)?;
    std::fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    Ok(p)
}

/// [`resolve_in`], then makes the parent and an empty file to bind over.
fn secure_file(root: &Path, path: &str) -> Result<PathBuf, String> {
    let p = resolve_in(root, path)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if p.symlink_metadata().is_err() {
        std::fs::File::create(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
    }
    Ok(p)
}

enum Never {}

/// Identity, limits and confinement, then `execve`.
fn exec_process(p: &ProcessConfig) -> Result<Never, String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if p.tty {
        // SAFETY: ioctl on stdin, which is the pty's slave side.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!(
                "make the tty the controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    for (kind, soft, hard) in &p.rlimits {
        let res = rlimit_resource(kind).ok_or_else(|| format!("unknown rlimit {kind}"))?;
        nix::sys::resource::setrlimit(res, *soft, *hard)
            .map_err(|e| format!("setrlimit {kind} {soft}/{hard}: {e}"))?;
    }
    if p.seccomp {
        // Installed while still root with CAP_SYS_ADMIN, so it does not need
        // no_new_privileges (which only applies when the spec asks).
        seccomp::install_runtime_default()?;
    }

    let keep = match &p.capabilities {
        None => caps::all(),
        Some(names) => {
            let mut set = caps::CapsHashSet::new();
            for n in names {
                let cap: caps::Capability = n
                    .to_uppercase()
                    .parse()
                    .map_err(|_| format!("unknown capability {n}"))?;
                set.insert(cap);
            }
            set
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
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
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {groups:?}: {e}"))?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {}: {e}", p.gid))?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {}: {e}", p.uid))?;
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, caps::CapSet::Effective, &keep)
        .map_err(|e| format!("set effective capabilities: {e}"))?;
    caps::set(None, caps::CapSet::Permitted, &keep)
        .map_err(|e| format!("set permitted capabilities: {e}"))?;
    caps::set(None, caps::CapSet::Inheritable, &keep)
        .map_err(|e| format!("set inheritable capabilities: {e}"))?;
    if p.uid != 0 {
        for cap in &keep {
            let _ = caps::raise(None, caps::CapSet::Ambient, *cap);
        }
    }
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
    }

    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    nix::unistd::chdir(cwd).map_err(|e| format!("chdir to the working directory {cwd}: {e}"))?;

    let arg0 = p.args.first().ok_or("no command to run (empty args)")?;
    let path = find_executable(arg0, &p.env)?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("argument {a:?} holds a NUL")))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = p
        .env
        .iter()
        .map(|e| CString::new(e.as_str()).map_err(|_| format!("env {e:?} holds a NUL")))
        .collect::<Result<_, _>>()?;
    let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(format!("exec {}: {e}", path.to_string_lossy()))
}

/// `arg0` as `execvp` would find it, but in the container's PATH (glibc's
/// execvpe searches the caller's environment, not the new one).
fn find_executable(arg0: &str, env: &[String]) -> Result<CString, String> {
    let cs = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL"));
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
    Err(format!(
        "exec: \"{arg0}\": executable file not found in $PATH ({path})"
    ))
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

/// Whether an rlimit name is one [`exec_process`] can set.
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
    fn resolve_in_stays_in_the_root() {
        let dir = tempdir();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in(&root, "/abs/x").unwrap(), root.join("etc/x"));
        assert_eq!(resolve_in(&root, "/etc/up/y").unwrap(), root.join("etc/y"));
        assert_eq!(resolve_in(&root, "/../../z").unwrap(), root.join("z"));
        assert!(resolve_in(&root, "/loop/a").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finds_executables_in_the_given_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_owned()];
        assert_eq!(
            find_executable("sh", &env).unwrap().to_str().unwrap(),
            "/bin/sh"
        );
        let e = find_executable("no-such-tool-here", &env).unwrap_err();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        assert_eq!(
            find_executable("./x", &env).unwrap().to_str().unwrap(),
            "./x"
        );
    }

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "vpod-init-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
