//! A pod's record under `<run-dir>/pods/<id>`: what `vpod ps`, `logs`,
//! `exec`, `stop` and `rm` read.
//!
//! ```text
//! pods/<id>/run.json        the `vpod run` arguments
//!           supervisor.pid  the process that owns the VM
//!           container.log   the container's output (stdout and stderr, as written)
//!           status.json     how the container ended (absent while it runs)
//!           vm/             the pod's state dir (ephemeral disk, vsock socket); gone with the VM
//! ```

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::ExitStatus;

use crate::run::{unix_now, RunArgs};

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
        let dir = pods.join(id);
        match std::fs::create_dir(&dir) {
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

    pub fn set_supervisor(&self, pid: u32) -> Result<(), RecordError> {
        self.write_json("supervisor.pid", &pid)
    }

    /// The supervisor's pid while it is alive.
    pub fn supervisor(&self) -> Option<i32> {
        let pid: u32 = self.read_json("supervisor.pid").ok()?;
        let pid = pid as i32;
        // A pid of ours only if its command line is a vpod process.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let is_vpod = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a0| a0.ends_with(b"vpod"));
        is_vpod.then_some(pid)
    }

    pub fn set_status(&self, s: &Status) -> Result<(), RecordError> {
        self.write_json("status.json", s)
    }

    pub fn status(&self) -> Option<Status> {
        self.read_json("status.json").ok()
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
