//! PID 1 system setup: the mounts, cgroups, hostname, loopback and entropy a
//! guest needs before the agent serves. Runs before the async runtime, in
//! order, each step a few syscalls: keep it that way (boot latency).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;

use crate::clock::Stamp;
use crate::log::{AgentLog, LEVEL_INFO};

/// Hostname when the kernel command line names none.
pub const DEFAULT_HOSTNAME: &str = "vpod";

/// Bytes read from the hardware RNG to seed the kernel's pool.
const ENTROPY_BYTES: usize = 64;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers delegated to child cgroups (the containers' groups).
const CGROUP_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// A step of the guest's system setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Making a mount point.
    #[error("create mount point {path}: {source}")]
    Mkdir {
        /// The mount point.
        path: String,
        /// The failure.
        source: Errno,
    },
    /// Mounting a system file system.
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The failure.
        source: Errno,
    },
}

/// ramfs' statfs magic (rootfs when the kernel has no tmpfs); not in libc.
const RAMFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x8584_58f6);

/// Whether `/` is the initramfs (rootfs: tmpfs or ramfs). vpod-init only
/// acts as the guest's init there: run as PID 1 of a container it must not
/// remount the system nor touch I/O ports and reset.
pub fn root_is_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(fs) => {
            let t = fs.filesystem_type();
            t == nix::sys::statfs::TMPFS_MAGIC || t == RAMFS_MAGIC
        }
        Err(_) => false,
    }
}

/// What vpod-init takes from the kernel command line (`/proc/cmdline`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// `vpod.hostname=NAME`
    pub hostname: Option<String>,
    /// `vpod.verbose` or `vpod.verbose=1`: echo info lines to the console.
    pub verbose: bool,
}

impl KernelCmdline {
    /// Picks vpod's words out of `/proc/cmdline`; others are ignored.
    pub fn parse(text: &str) -> Self {
        let mut out = KernelCmdline::default();
        for word in text.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match key {
                "vpod.hostname" => out.hostname = value.map(str::to_owned),
                "vpod.verbose" => out.verbose = !matches!(value, Some("0")),
                _ => {}
            }
        }
        out
    }
}

/// A valid hostname: 1..=64 bytes of letters, digits, '-' and '.'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn mounts() -> [MountSpec; 8] {
    let nosuid = MsFlags::MS_NOSUID;
    let nodev = MsFlags::MS_NODEV;
    let noexec = MsFlags::MS_NOEXEC;
    [
        MountSpec {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid | nodev | noexec,
            data: None,
        },
        MountSpec {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid | nodev | noexec,
            data: None,
        },
        MountSpec {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: nosuid,
            data: Some("mode=0755"),
        },
        MountSpec {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: nosuid | noexec,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        },
        MountSpec {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=1777"),
        },
        MountSpec {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=0755"),
        },
        MountSpec {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: nosuid | nodev,
            data: Some("mode=1777"),
        },
        MountSpec {
            source: "cgroup2",
            target: CGROUP_ROOT,
            fstype: "cgroup2",
            flags: nosuid | nodev | noexec,
            data: Some("nsdelegate"),
        },
    ]
}

/// Sets the guest up. Mount failures are fatal (a guest without /proc or
/// cgroups would fail later in confusing ways); the rest only warns.
pub fn setup_system(log: &Arc<AgentLog>) -> Result<(), SetupError> {
    let start = Stamp::now();

    if let Err(e) = leave_rootfs() {
        // Containers then fail to start (pivot_root), the rest works.
        log.warn(format!("move the root off the initramfs mount: {e}"));
    }

    for m in mounts() {
        mkdir_p(m.target)?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => {}
            // Already mounted (e.g. the kernel mounted devtmpfs itself).
            Err(Errno::EBUSY) => log.info(format!("{} already mounted", m.target)),
            Err(source) => {
                return Err(SetupError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    dev_symlinks(log);

    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => KernelCmdline::parse(&text),
        Err(e) => {
            log.warn(format!("read /proc/cmdline: {e}"));
            KernelCmdline::default()
        }
    };
    if cmdline.verbose {
        log.set_console_level(LEVEL_INFO);
    }

    if let Err(e) = enable_cgroup_controllers(Path::new(CGROUP_ROOT), CGROUP_CONTROLLERS, log) {
        log.warn(format!("enable cgroup controllers: {e}"));
    }

    let hostname = match cmdline.hostname {
        Some(name) if valid_hostname(&name) => name,
        Some(name) => {
            log.warn(format!(
                "invalid vpod.hostname {name:?}, using {DEFAULT_HOSTNAME}"
            ));
            DEFAULT_HOSTNAME.to_owned()
        }
        None => DEFAULT_HOSTNAME.to_owned(),
    };
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        log.warn(format!("set hostname {hostname}: {e}"));
    }

    if let Err(e) = bring_up_loopback() {
        log.warn(format!("bring up lo: {e}"));
    }

    seed_entropy_in_background(log.clone());

    log.info(format!(
        "system setup done in {:.3} ms (hostname {hostname})",
        Stamp::now().ms_since(&start)
    ));
    Ok(())
}

/// Puts a bind mount of the initramfs over it and makes that our root.
///
/// pivot_root(2) refuses to move the root when the current root is the
/// kernel's initial rootfs mount, and containers need pivot_root: with it
/// their old root is detached, where a chroot-based switch would leave the
/// whole guest reachable to a process with CAP_SYS_CHROOT. After this the
/// rootfs mount is only the empty parent every Linux mount tree has.
/// Everything mounted later sits on the bind mount.
fn leave_rootfs() -> Result<(), Errno> {
    const NEW: &str = "/.vpod-root";
    match nix::unistd::mkdir(NEW, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    mount(
        Some("/"),
        NEW,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    nix::unistd::chdir(NEW)?;
    mount(Some(NEW), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

fn mkdir_p(path: &str) -> Result<(), SetupError> {
    let mut prefix = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match nix::unistd::mkdir(prefix.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(SetupError::Mkdir {
                    path: prefix,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The /dev links programs expect and devtmpfs does not create.
fn dev_symlinks(log: &AgentLog) {
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => log.warn(format!("symlink {link} -> {target}: {e}")),
        }
    }
}

/// Enables `wanted` controllers (those the kernel has) for child cgroups.
pub fn enable_cgroup_controllers(
    root: &Path,
    wanted: &[&str],
    log: &AgentLog,
) -> io::Result<Vec<String>> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let (enable, missing): (Vec<&str>, Vec<&str>) =
        wanted.iter().partition(|c| available.contains(c));
    if !missing.is_empty() {
        log.warn(format!(
            "cgroup controllers missing from the kernel: {}",
            missing.join(" ")
        ));
    }
    if !enable.is_empty() {
        let line = enable
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        OpenOptions::new()
            .write(true)
            .open(root.join("cgroup.subtree_control"))?
            .write_all(line.as_bytes())?;
    }
    Ok(enable.into_iter().map(str::to_owned).collect())
}

/// Sets IFF_UP on `lo`; the kernel then adds 127.0.0.1/8 and ::1 itself.
fn bring_up_loopback() -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data (integers, arrays and a union of
    // them); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from and writes
    // the flags into `req`, a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS only reads `req`, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Seeds the kernel's entropy pool from virtio-rng on a separate thread: a
/// slow or silent device must never hold up boot.
fn seed_entropy_in_background(log: Arc<AgentLog>) {
    let thread_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("entropy".into())
        .spawn(move || {
            let log = thread_log;
            match seed_entropy(
                Path::new("/dev/hwrng"),
                Path::new("/dev/urandom"),
                ENTROPY_BYTES,
            ) {
                Ok(Some(n)) => log.info(format!("credited {} bits from /dev/hwrng", n * 8)),
                Ok(None) => log.info("no /dev/hwrng: entropy not seeded"),
                Err(e) => log.warn(format!("seed entropy from /dev/hwrng: {e}")),
            }
        });
    if let Err(e) = spawned {
        // Not fatal: the kernel still gathers entropy itself, only slower.
        log.warn(format!("start entropy thread: {e}"));
    }
}

/// Reads `bytes` from `hwrng` and credits them to the pool via `urandom`.
/// `Ok(None)` if there is no hardware RNG.
pub fn seed_entropy(hwrng: &Path, urandom: &Path, bytes: usize) -> io::Result<Option<usize>> {
    let mut rng = match std::fs::File::open(hwrng) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = vec![0u8; bytes];
    rng.read_exact(&mut data)?;
    let pool = OpenOptions::new().write(true).open(urandom)?;
    add_entropy(&pool, &data)?;
    Ok(Some(data.len()))
}

/// RNDADDENTROPY: mixes `data` into the pool and credits it fully.
fn add_entropy(pool: &std::fs::File, data: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = data.len().div_ceil(4);
    let mut info = vec![0 as libc::c_int; 2 + words];
    info[0] = libc::c_int::try_from(data.len() * 8)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entropy buffer too large"))?;
    info[1] = data.len() as libc::c_int;
    for (i, chunk) in data.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = libc::c_int::from_ne_bytes(w);
    }
    let request = nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
    // SAFETY: `info` is a properly laid out rand_pool_info whose buf_size
    // matches the bytes that follow the header; it outlives the call and the
    // kernel only reads it.
    let rc = unsafe { libc::ioctl(pool.as_raw_fd(), request as _, info.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cmdline() {
        let c = KernelCmdline::parse("console=ttyS0 vpod.hostname=pod-a reboot=k panic=-1\n");
        assert_eq!(c.hostname.as_deref(), Some("pod-a"));
        assert!(!c.verbose);
        assert!(KernelCmdline::parse("vpod.verbose").verbose);
        assert!(KernelCmdline::parse("vpod.verbose=1").verbose);
        assert!(!KernelCmdline::parse("vpod.verbose=0").verbose);
        assert_eq!(KernelCmdline::parse(""), KernelCmdline::default());
    }

    #[test]
    fn validates_hostnames() {
        assert!(valid_hostname("vpod"));
        assert!(valid_hostname("my-pod.ns"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname("x/y"));
        assert!(!valid_hostname(&"a".repeat(65)));
    }

    #[test]
    fn rndaddentropy_request_code() {
        // _IOW('R', 0x03, int[2]) from <linux/random.h>.
        let request = nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
        assert_eq!(request as u64, 0x4008_5203);
    }

    #[test]
    fn enables_available_controllers_only() {
        let dir = std::env::temp_dir().join(format!("vpod-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        let log = AgentLog::new(16, 0);
        let enabled = enable_cgroup_controllers(&dir, CGROUP_CONTROLLERS, &log).unwrap();
        let written = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(enabled, vec!["cpu", "memory"]);
        assert_eq!(written, "+cpu +memory");
        assert!(log
            .snapshot()
            .iter()
            .any(|e| e.message.contains("missing") && e.message.contains("pids")));
    }

    #[test]
    fn seed_entropy_without_hwrng_is_none() {
        let r = seed_entropy(
            Path::new("/nonexistent/hwrng"),
            Path::new("/dev/urandom"),
            8,
        );
        assert_eq!(r.unwrap(), None);
    }

    #[test]
    fn seed_entropy_reads_then_fails_cleanly_on_non_random_device() {
        // /dev/zero stands in for the RNG; a regular file for the pool makes
        // the ioctl fail (ENOTTY) without crediting the host kernel's pool.
        let pool = std::env::temp_dir().join(format!("vpod-pool-test-{}", std::process::id()));
        std::fs::write(&pool, "").unwrap();
        let r = seed_entropy(Path::new("/dev/zero"), &pool, 13);
        std::fs::remove_file(&pool).unwrap();
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOTTY));
    }
}
