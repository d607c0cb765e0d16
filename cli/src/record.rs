//! A pod's record under `<run-dir>/pods/<id>`: what `vpod ps`, `logs`,
//! `exec`, `stop` and `rm` read.
//!
//! ```text
//! pods/<id>/run.json        the `vpod run` arguments
//!           supervisor.pid  the process that owns the VM: {"pid", "start_time"}
//!           container.log   the container's output (stdout and stderr, as written)
//!           status.json     how the container ended (absent while it runs)
//!           vm/             the pod's state dir (ephemeral disk, vsock socket); gone with the VM
//! ```
//!
//! A record always names its owner: `vpod run` itself from the start, then
//! the detached supervisor. A record with no status whose owner is dead
//! (killed, crashed) is garbage: [`collect_garbage`] removes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::ExitStatus;

use crate::args::RunArgs;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("pod {0} already exists (`vpod rm` it or pick another --name)")]
    Exists(String),
    #[error("no pod {0} (see `vpod ps`)")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Seconds since the Unix epoch: when a record was made, when its container ended.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub exit_code: i32,
    pub reason: String,
    pub finished_unix: u64,
}

impl Status {
    pub fn from_exit(e: &ExitStatus) -> Status {
        Status {
            exit_code: e.exit_code,
            reason: e.reason.clone(),
            finished_unix: unix_now(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    args: RunArgs,
    created_unix: u64,
}

/// `supervisor.pid`: which process owns the pod. The start time tells that
/// process apart from a later one given the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    /// `/proc/PID/stat` field 22 (clock ticks after boot).
    start_time: u64,
}

/// Start time of process `pid` (`/proc/PID/stat` field 22), if it exists.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ...: comm may hold spaces and parens.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A live supervisor, held by a pidfd: signals reach that process or
/// nothing, never a process that got its pid later.
#[derive(Debug)]
pub struct Supervisor {
    fd: OwnedFd,
}

impl Supervisor {
    /// The process `o` names, if it still runs. The pidfd is opened before
    /// the start time is checked: if the check passes, the fd is that process.
    fn open(o: Owner) -> Option<Supervisor> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, o.pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let s = Supervisor { fd };
        (proc_start_time(o.pid) == Some(o.start_time) && !s.exited()).then_some(s)
    }

    /// Sends `sig` to this process; false if it is gone.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> bool {
        // SAFETY: a pidfd we own, a valid signal, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    /// Whether the process has exited (its pidfd is readable then).
    pub fn exited(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub async fn wait_gone(&self, timeout: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while !self.exited() {
            if t0.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// A record younger than this with no owner yet is being made, not garbage.
const UNOWNED_GRACE: Duration = Duration::from_secs(60);

/// Removes the records of pods that ended without saying so: no
/// `status.json` and an owner that no longer runs (a `vpod run` or
/// `__supervise` killed or crashed). The pod's ephemeral dir goes too; its
/// VM lived in the owner and is gone with it. Returns the ids removed.
pub fn collect_garbage(run_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(pods_dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if !vpod_sandbox::pod::valid_pod_id(&id) {
            continue;
        }
        let rec = Record { id, dir: e.path() };
        if rec.dir.join("status.json").exists() || rec.supervisor().is_some() {
            continue;
        }
        if rec.owner().is_none() {
            let young = std::fs::metadata(&rec.dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < UNOWNED_GRACE);
            if young {
                continue;
            }
        }
        rec.remove();
        removed.push(rec.id);
    }
    removed
}

#[derive(Debug, Clone)]
pub struct Record {
    id: String,
    dir: PathBuf,
}

/// A fresh pod id: 12 hex digits from the kernel's RNG.
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn pods_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pods")
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RecordError {
    let path = path.to_path_buf();
    move |source| RecordError::Io { op, path, source }
}

impl Record {
    pub fn create(run_dir: &Path, id: &str, args: &RunArgs) -> Result<Record, RecordError> {
        let pods = pods_dir(run_dir);
        std::fs::create_dir_all(&pods).map_err(io_err("create", &pods))?;
        // Pod records (logs, console, sockets) are root's alone.
        std::fs::set_permissions(&pods, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &pods))?;
        let dir = pods.join(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RecordError::Exists(id.to_owned()))
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let rec = Record {
            id: id.to_owned(),
            dir,
        };
        // Owned from the start: until then `collect_garbage` waits.
        rec.set_supervisor_self()?;
        let meta = Meta {
            args: args.clone(),
            created_unix: unix_now(),
        };
        rec.write_json("run.json", &meta)?;
        Ok(rec)
    }

    pub fn open(dir: &Path) -> Result<Record, RecordError> {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !dir.join("run.json").is_file() {
            return Err(RecordError::NotFound(id));
        }
        Ok(Record {
            id,
            dir: dir.to_path_buf(),
        })
    }

    pub fn find(run_dir: &Path, id: &str) -> Result<Record, RecordError> {
        if !vpod_sandbox::pod::valid_pod_id(id) {
            return Err(RecordError::NotFound(id.to_owned()));
        }
        Record::open(&pods_dir(run_dir).join(id))
    }

    pub fn list(run_dir: &Path) -> Vec<Record> {
        let mut out: Vec<Record> = std::fs::read_dir(pods_dir(run_dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Record::open(&e.path()).ok())
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.created()));
        out
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    pub fn vsock(&self) -> PathBuf {
        vpod_sandbox::pod::paths::vsock(&self.vm_dir())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<(), RecordError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let data = serde_json::to_vec_pretty(v).map_err(|source| RecordError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, RecordError> {
        let path = self.dir.join(name);
        let data = std::fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&data).map_err(|source| RecordError::Json { path, source })
    }

    pub fn args(&self) -> Result<RunArgs, RecordError> {
        Ok(self.read_json::<Meta>("run.json")?.args)
    }

    pub fn created(&self) -> u64 {
        self.read_json::<Meta>("run.json")
            .map(|m| m.created_unix)
            .unwrap_or(0)
    }

    /// This process owns the pod from now on.
    pub fn set_supervisor_self(&self) -> Result<(), RecordError> {
        let pid = std::process::id();
        let start_time = proc_start_time(pid).ok_or_else(|| RecordError::Io {
            op: "read the start time of",
            path: format!("/proc/{pid}/stat").into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        self.write_json("supervisor.pid", &Owner { pid, start_time })
    }

    /// Who the record says owns the pod (alive or not). A bare pid (records
    /// of vpod before start times) names no one: it can't be verified.
    fn owner(&self) -> Option<Owner> {
        self.read_json("supervisor.pid").ok()
    }

    /// The supervisor while it is alive: the process the record names, with
    /// the start time it names.
    pub fn supervisor(&self) -> Option<Supervisor> {
        Supervisor::open(self.owner()?)
    }

    pub fn set_status(&self, s: &Status) -> Result<(), RecordError> {
        self.write_json("status.json", s)
    }

    pub fn status(&self) -> Option<Status> {
        self.read_json("status.json").ok()
    }

    /// Removes the record and the pod's ephemeral disk dir (which lives elsewhere, under
    /// `--ephemeral-dir`): whoever removes a record, the disk goes with it.
    pub fn remove(&self) {
        if let Ok(args) = self.args() {
            let _ = std::fs::remove_dir_all(args.ephemeral_dir.join(&self.id));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        run: RunArgs,
    }

    fn run_args(ephemeral_dir: &Path) -> RunArgs {
        Args::parse_from([
            "vpod".as_ref(),
            "--ephemeral-dir".as_ref(),
            ephemeral_dir.as_os_str(),
            "img".as_ref(),
        ])
        .run
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vpod-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A process whose argv[0] ends in "vpod", as the old check wanted.
    fn fake_vpod(dir: &Path) -> std::process::Child {
        let exe = dir.join("fake-vpod");
        std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
        std::process::Command::new(&exe).arg("60").spawn().unwrap()
    }

    /// Issue 12 item 14: a pid in a record is the supervisor only with the
    /// start time recorded with it; signals go through its pidfd.
    #[test]
    fn a_pid_is_the_supervisor_only_with_its_start_time() {
        let d = temp("owner");
        let rec = Record::create(&d, "p1", &run_args(&d.join("eph"))).unwrap();
        // Made by this process: owned by it from the start.
        let me = std::process::id();
        assert_eq!(rec.owner().map(|o| o.pid), Some(me));
        assert!(rec.supervisor().is_some());

        let mut other = fake_vpod(&d);
        let pid = other.id();
        let start_time = proc_start_time(pid).unwrap();
        // The same pid, started at another time: a recycled pid.
        rec.write_json(
            "supervisor.pid",
            &Owner {
                pid,
                start_time: start_time + 1,
            },
        )
        .unwrap();
        assert!(rec.supervisor().is_none());
        // A bare pid (no start time) can't be verified: no one.
        rec.write_json("supervisor.pid", &pid).unwrap();
        assert!(rec.supervisor().is_none());
        assert!(other.try_wait().unwrap().is_none(), "still running");

        rec.write_json("supervisor.pid", &Owner { pid, start_time })
            .unwrap();
        let sup = rec.supervisor().expect("the live supervisor");
        assert!(!sup.exited());
        assert!(sup.signal(nix::sys::signal::Signal::SIGKILL));
        other.wait().unwrap();
        assert!(sup.exited());
        // Reaped, its pid free: neither the pidfd nor the record reach anyone.
        assert!(!sup.signal(nix::sys::signal::Signal::SIGKILL));
        assert!(rec.supervisor().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Found by `make soak`: `vpod run -d` removed the record of a supervisor killed during
    /// boot but not its ephemeral disk. Whoever removes a record removes the disk too.
    #[test]
    fn removing_a_record_removes_its_ephemeral_disk() {
        let d = temp("remove");
        let eph = d.join("eph");
        let rec = Record::create(&d, "p1", &run_args(&eph)).unwrap();
        std::fs::create_dir_all(eph.join("p1")).unwrap();
        std::fs::write(eph.join("p1/ephemeral.img"), b"disk").unwrap();
        std::fs::create_dir_all(eph.join("p2")).unwrap();
        rec.remove();
        assert!(!rec.dir().exists());
        assert!(!eph.join("p1").exists(), "the pod's disk dir stayed");
        assert!(eph.join("p2").exists(), "another pod's disk dir went");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Issue 12 item 11: records whose owner died without a status are
    /// garbage (with their ephemeral dir); others stay.
    #[test]
    fn records_with_a_dead_owner_and_no_status_are_garbage() {
        let d = temp("gc");
        let eph = d.join("eph");
        let mk = |id: &str| {
            let r = Record::create(&d, id, &run_args(&eph)).unwrap();
            std::fs::create_dir_all(eph.join(id)).unwrap();
            std::fs::create_dir_all(r.vm_dir()).unwrap();
            r
        };
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = Owner {
            pid: c.id(),
            start_time: proc_start_time(c.id()).unwrap_or(1),
        };
        c.wait().unwrap();

        let live = mk("live");
        let killed = mk("killed");
        killed.write_json("supervisor.pid", &dead).unwrap();
        let exited = mk("exited");
        exited.write_json("supervisor.pid", &dead).unwrap();
        exited
            .set_status(&Status {
                exit_code: 0,
                reason: "Completed".into(),
                finished_unix: 0,
            })
            .unwrap();
        let new = mk("new");
        std::fs::remove_file(new.dir().join("supervisor.pid")).unwrap();
        let old = mk("old");
        std::fs::remove_file(old.dir().join("supervisor.pid")).unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * UNOWNED_GRACE;
        std::fs::File::open(old.dir())
            .unwrap()
            .set_modified(long_ago)
            .unwrap();

        let mut gone = collect_garbage(&d);
        gone.sort();
        assert_eq!(gone, ["killed", "old"]);
        for r in [&killed, &old] {
            assert!(
                !r.dir().exists() && !eph.join(r.id()).exists(),
                "{}",
                r.id()
            );
        }
        for r in [&live, &exited, &new] {
            assert!(r.dir().exists() && eph.join(r.id()).exists(), "{}", r.id());
        }
        assert!(collect_garbage(&d).is_empty());
        assert!(collect_garbage(&d.join("absent")).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
