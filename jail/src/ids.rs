//! One unprivileged uid/gid per pod, from a configured range, so two VMMs can never signal or
//! ptrace each other (the kernel's checks are by uid) and `RLIMIT_NPROC` counts one pod's tasks.
//!
//! Allocation is a lock file per uid under a state directory, `<state_dir>/<uid>.lock`, locked
//! with `flock(LOCK_EX | LOCK_NB)`. The pod's first candidate is a stable hash of its key (the
//! pod id) into the range, then the next ones in order, so a pod gets the same uid each time the
//! range has room, and a taken one is never handed out twice: a held lock means a live owner.
//!
//! Who holds the lock: the host takes it ([`lease`]), passes the fd to the VMM process
//! ([`crate::spawn::PassFd`]) and lists it in [`crate::JailSpec::waiter_fds`]; the jail's waiter
//! keeps it and the jailed VMM closes it (so the VMM can't unlock it). A `flock` belongs to the
//! open file, not to one fd, so the uid stays taken while any copy is open, and is free again the
//! moment the VMM is gone, however it died (exit, SIGKILL, SIGSYS): the kernel closes the fds. The
//! host may drop its own [`IdLease`] once the VMM is spawned. gid = uid (one group per pod too).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A range of host uids (and the same gids) reserved for VMMs: `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The lowest uid.
    pub first: u32,
    /// How many.
    pub count: u32,
}

impl Default for IdRange {
    /// 65536 ids from 100000000: well above login users, /etc/subuid's usual 100000+ blocks and
    /// systemd's dynamic users. Pick a range nothing else on the node allocates from.
    fn default() -> Self {
        Self {
            first: 100_000_000,
            count: 65_536,
        }
    }
}

/// Why no uid could be leased.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// `count` is 0, or the range doesn't fit in u32 / includes 0.
    #[error("bad id range {first}+{count}")]
    BadRange {
        /// First id.
        first: u32,
        /// Count.
        count: u32,
    },
    /// The state directory or a lock file.
    #[error("uid lease {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Every uid of the range is held by a running pod.
    #[error("all {0} uids of the range are in use")]
    Exhausted(u32),
}

/// A uid (and gid) held for one pod while this (or any copy of its fd) is open.
#[derive(Debug)]
pub struct IdLease {
    uid: u32,
    file: File,
    path: PathBuf,
}

impl IdLease {
    /// The pod's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The pod's gid (the same number).
    pub fn gid(&self) -> u32 {
        self.uid
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for IdLease {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for IdLease {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// FNV-1a: stable across builds and Rust versions (std's hashers promise neither).
fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Leases a free uid for `pod` from `range`, with lock files in `state_dir` (created 0700).
pub fn lease(range: &IdRange, state_dir: &Path, pod: &str) -> Result<IdLease, IdError> {
    let bad = IdError::BadRange {
        first: range.first,
        count: range.count,
    };
    if range.count == 0 || range.first == 0 || range.first.checked_add(range.count - 1).is_none() {
        return Err(bad);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err(state_dir))?;
    let start = (stable_hash(pod) % u64::from(range.count)) as u32;
    for i in 0..range.count {
        let uid = range.first + (start + i) % range.count;
        let path = state_dir.join(format!("{uid}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on an fd we own; LOCK_NB so it never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                continue;
            }
            return Err(io_err(&path)(e));
        }
        // Who has it, for a human looking at the state directory.
        file.set_len(0).map_err(io_err(&path))?;
        (&file)
            .write_all(format!("{pod}\n").as_bytes())
            .map_err(io_err(&path))?;
        return Ok(IdLease { uid, file, path });
    }
    Err(IdError::Exhausted(range.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vpod-jail-ids-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn deterministic_collision_free_and_freed_on_close() {
        let d = dir("a");
        let range = IdRange {
            first: 5000,
            count: 3,
        };
        let a = lease(&range, &d, "pod-a").unwrap();
        let uid_a = a.uid();
        drop(a);
        // Same pod, free range: same uid.
        let a = lease(&range, &d, "pod-a").unwrap();
        assert_eq!(a.uid(), uid_a);
        assert_eq!(a.gid(), uid_a);
        assert!((5000..5003).contains(&a.uid()));
        // Even the same key can't take a held uid.
        let b = lease(&range, &d, "pod-a").unwrap();
        let c = lease(&range, &d, "pod-c").unwrap();
        let mut uids = [a.uid(), b.uid(), c.uid()];
        uids.sort();
        assert_eq!(uids, [5000, 5001, 5002]);
        assert!(matches!(
            lease(&range, &d, "pod-d"),
            Err(IdError::Exhausted(3))
        ));
        // A closed lease frees its uid. Another test of this binary may fork in the meantime (the
        // jail's own tests do, and some children never exec): its copy of the lease's fd holds
        // the lock until that child is gone, so the uid comes free a moment later, not at once.
        let freed = b.uid();
        drop(b);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let d_lease = loop {
            match lease(&range, &d, "pod-d") {
                Ok(l) => break l,
                Err(IdError::Exhausted(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(d_lease.uid(), freed);
        assert_eq!(
            fs::read_to_string(a.path()).unwrap(),
            "pod-a\n",
            "the lock file names its pod"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_ranges() {
        let d = dir("b");
        for (first, count) in [(0, 10), (10, 0), (u32::MAX, 2)] {
            assert!(matches!(
                lease(&IdRange { first, count }, &d, "p"),
                Err(IdError::BadRange { .. })
            ));
        }
    }
}
