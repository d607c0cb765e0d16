//! Why a container init could not start its process. The message travels
//! to the agent over the error pipe and ends up, word for word, in
//! StartContainer's (or Exec's) FailedPrecondition status.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::unistd::Gid;

use super::super::pipe::child::ConfigError;
use super::super::seccomp::SeccompError;

/// A start error of the container init, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    // Entering the namespaces.
    /// The agent's config did not arrive.
    #[error("container init config: {0}")]
    Config(#[source] ConfigError),
    /// New mount, UTS, IPC and PID namespaces.
    #[error("unshare namespaces: {0}")]
    Unshare(#[source] Errno),
    /// The running container's namespace file (exec).
    #[error("open {path}: {source} (has the container exited?)")]
    OpenNamespace {
        /// `/proc/<pid>/ns/<ns>`.
        path: String,
        /// The failure.
        source: io::Error,
    },
    /// setns into the running container's namespace.
    #[error("join {ns} namespace of pid {pid}: {source}")]
    JoinNamespace {
        /// ipc, uts, pid or mnt.
        ns: &'static str,
        /// The container's process.
        pid: i32,
        /// The failure.
        source: Errno,
    },
    /// Forking the container process.
    #[error("fork: {0}")]
    Fork(#[source] Errno),
    /// A pod sysctl (`securityContext.sysctls`) in the pod's namespaces.
    #[error("sysctl {key}={value} (securityContext.sysctls): {source}")]
    Sysctl {
        /// The sysctl's name.
        key: String,
        /// The value asked for.
        value: String,
        /// The failure.
        source: io::Error,
    },

    // The root.
    /// A mount(2).
    #[error("mount {what} on {}: {source}", target.display())]
    Mount {
        /// The file system type, else the source, else "bind".
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The failure.
        source: Errno,
    },
    /// A /dev node.
    #[error("mknod {}: {source}", path.display())]
    Mknod {
        /// The node.
        path: PathBuf,
        /// The failure.
        source: Errno,
    },
    /// A mount point under /dev.
    #[error("mkdir {}: {source}", path.display())]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: Errno,
    },
    /// A mount point's directories, made on the way.
    #[error("mkdir {}: {source}", path.display())]
    CreateDirs {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// An empty file to bind a file over.
    #[error("create {}: {source}", path.display())]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A /dev symlink (ptmx, fd, stdin...).
    #[error("symlink /dev/{link}: {source}")]
    Symlink {
        /// Its name under /dev.
        link: &'static str,
        /// The failure.
        source: io::Error,
    },
    /// Resolving a path in the container met a symlink loop.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The container path.
        path: String,
    },
    /// Reading a symlink on the way.
    #[error("readlink {}: {source}", path.display())]
    Readlink {
        /// The symlink.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The UTS hostname.
    #[error("set hostname {name}: {source}")]
    Hostname {
        /// The hostname.
        name: String,
        /// The failure.
        source: Errno,
    },
    /// chdir into the new root, or to its / after the pivot.
    #[error("chdir {}: {source}", path.display())]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: Errno,
    },
    /// pivot_root into the rootfs.
    #[error("pivot_root: {0}")]
    PivotRoot(#[source] Errno),
    /// Detaching the old root after the pivot.
    #[error("detach old root: {0}")]
    DetachOldRoot(#[source] Errno),

    // The process.
    /// A new session.
    #[error("setsid: {0}")]
    Setsid(#[source] Errno),
    /// TIOCSCTTY on the TTY.
    #[error("make the tty the controlling terminal: {0}")]
    ControllingTty(#[source] io::Error),
    /// An rlimit name the init does not know.
    #[error("unknown rlimit {0}")]
    UnknownRlimit(String),
    /// setrlimit.
    #[error("setrlimit {kind} {soft}/{hard}: {source}")]
    Setrlimit {
        /// The RLIMIT_* name.
        kind: String,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
        /// The failure.
        source: Errno,
    },
    /// The seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A capability name the init does not know.
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    /// Dropping a capability from the bounding set.
    #[error("drop {cap} from the bounding set: {source}")]
    DropBounding {
        /// The capability.
        cap: caps::Capability,
        /// The failure.
        source: caps::errors::CapsError,
    },
    /// Supplementary groups.
    #[error("setgroups {groups:?}: {source}")]
    Setgroups {
        /// The groups.
        groups: Vec<Gid>,
        /// The failure.
        source: Errno,
    },
    /// setresgid.
    #[error("setgid {gid}: {source}")]
    Setgid {
        /// The group.
        gid: u32,
        /// The failure.
        source: Errno,
    },
    /// setresuid.
    #[error("setuid {uid}: {source}")]
    Setuid {
        /// The user.
        uid: u32,
        /// The failure.
        source: Errno,
    },
    /// Setting a capability set.
    #[error("set {set} capabilities: {source}")]
    SetCaps {
        /// effective, permitted or inheritable.
        set: &'static str,
        /// The failure.
        source: caps::errors::CapsError,
    },
    /// PR_SET_NO_NEW_PRIVS.
    #[error("set no_new_privs: {0}")]
    NoNewPrivs(#[source] io::Error),
    /// The working directory.
    #[error("chdir to the working directory {cwd}: {source}")]
    Cwd {
        /// The directory.
        cwd: String,
        /// The failure.
        source: Errno,
    },
    /// Empty args.
    #[error("no command to run (empty args)")]
    NoCommand,
    /// An argument with a NUL byte.
    #[error("argument {0:?} holds a NUL")]
    NulInArg(String),
    /// An environment entry with a NUL byte.
    #[error("env {0:?} holds a NUL")]
    NulInEnv(String),
    /// A program path with a NUL byte.
    #[error("{0:?} holds a NUL")]
    NulInPath(String),
    /// `args[0]` is in no PATH directory.
    #[error("exec: \"{arg0}\": executable file not found in $PATH ({path})")]
    NotFound {
        /// The command.
        arg0: String,
        /// The PATH searched.
        path: String,
    },
    /// execve itself.
    #[error("exec {path}: {source}")]
    Exec {
        /// The program.
        path: String,
        /// The failure.
        source: Errno,
    },
}
