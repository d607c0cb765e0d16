//! Containers in the pod: each one a process tree in its own mount, PID, UTS
//! and IPC namespaces (the network is the pod's), in its own cgroup, on an
//! overlay of its image's read-only disk and a writable layer on the pod's
//! ephemeral disk.
//!
//! The agent side lives here; [`init`] is the container's side (a separate
//! exec of vpod-init that enters the namespaces and execs the process).

pub mod cgroup;
pub mod init;
pub mod seccomp;
pub mod stdio;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use vpod_agent_api::pb::{
    ContainerInfo, ContainerState, ContainerStatsResponse, CreateContainerRequest, ExitStatus,
    Limits, MountKind, OutputChunk, OutputStream, Process, SeccompProfile,
};

use crate::clock::boottime_ns;
use crate::disks::{DiskError, Disks};
use crate::log::AgentLog;
use crate::reaper::Reaper;
use crate::volumes::{VolumeError, Volumes};
use cgroup::Cgroup;
use init::{BindMount, InitConfig, Namespaces, ProcessConfig, RootConfig};
use stdio::{AsyncEnd, Stdio};

/// Where container rootfs overlays are mounted.
pub const ROOTFS_ROOT: &str = "/run/vpod/containers";
/// Output chunks buffered before the container's writes block (a pipe's
/// worth of back pressure when nobody is attached).
const OUTPUT_BUFFER: usize = 64;
/// How long RemoveContainer waits for a killed container to be reaped.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container id {0:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no container {0}")]
    NotFound(String),
    #[error("container {id} is {state}, {what}")]
    State {
        id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("container {id}: {msg}")]
    Invalid { id: String, msg: String },
    #[error("container {id}: start: {msg}")]
    Start { id: String, msg: String },
    #[error("container {id}: {op}: {source}")]
    Io {
        id: String,
        op: String,
        source: std::io::Error,
    },
    #[error("container {id}: {source}")]
    Disk { id: String, source: DiskError },
    #[error("container {id}: {source}")]
    Volume { id: String, source: VolumeError },
}

impl From<ContainerError> for tonic::Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError::*;
        let msg = e.to_string();
        match e {
            BadId(_) | Invalid { .. } => tonic::Status::invalid_argument(msg),
            Exists(_) => tonic::Status::already_exists(msg),
            NotFound(_) => tonic::Status::not_found(msg),
            State { .. } | Start { .. } => tonic::Status::failed_precondition(msg),
            Volume {
                source: VolumeError::Unknown(_),
                ..
            }
            | Disk {
                source: DiskError::NotFound(_) | DiskError::NoEphemeral,
                ..
            } => tonic::Status::failed_precondition(msg),
            Io { .. } | Disk { .. } | Volume { .. } => tonic::Status::internal(msg),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    /// StartContainer is under way (a second one is refused).
    Starting,
    Running {
        pid: i32,
    },
    Exited,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running { .. } => "running",
            State::Exited => "exited",
        }
    }
}

#[derive(Debug)]
pub struct Container {
    id: String,
    req: CreateContainerRequest,
    rootfs: PathBuf,
    layer: PathBuf,
    mounts: Vec<BindMount>,
    cgroup: Cgroup,
    state: Mutex<State>,
    exit: watch::Sender<Option<ExitStatus>>,
    output: Arc<tokio::sync::Mutex<mpsc::Receiver<OutputChunk>>>,
    output_tx: Mutex<Option<mpsc::Sender<OutputChunk>>>,
    stdin: tokio::sync::Mutex<Option<AsyncEnd>>,
    pty: Mutex<Option<AsyncEnd>>,
}

impl Container {
    fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's devpts instance, mounted next to its rootfs.
    fn pts(&self) -> PathBuf {
        pts_dir(&self.rootfs)
    }

    fn set_state(&self, s: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn wrong_state(&self, what: &'static str) -> ContainerError {
        ContainerError::State {
            id: self.id.clone(),
            state: self.state().name(),
            what,
        }
    }

    fn io(&self, op: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
        let op = op.into();
        move |source| ContainerError::Io {
            id: self.id.clone(),
            op,
            source,
        }
    }
}

/// The pod's containers.
#[derive(Debug)]
pub struct Containers {
    map: Mutex<HashMap<String, Arc<Container>>>,
    reaper: Arc<Reaper>,
    disks: Arc<Disks>,
    volumes: Arc<Volumes>,
    cgroup_parent: PathBuf,
    log: Arc<AgentLog>,
}

pub fn valid_id(id: &str) -> bool {
    crate::volumes::valid_name(id) && id.len() <= 64
}

impl Containers {
    pub fn new(
        reaper: Arc<Reaper>,
        disks: Arc<Disks>,
        volumes: Arc<Volumes>,
        log: Arc<AgentLog>,
    ) -> Self {
        Containers {
            map: Mutex::default(),
            reaper,
            disks,
            volumes,
            cgroup_parent: PathBuf::from(cgroup::CONTAINERS_CGROUP),
            log,
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    /// Mounts the rootfs, makes the cgroup, records the container.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateContainerRequest,
    ) -> Result<(), ContainerError> {
        let id = req.id.clone();
        if !valid_id(&id) {
            return Err(ContainerError::BadId(id));
        }
        let invalid = |msg: String| ContainerError::Invalid {
            id: id.clone(),
            msg,
        };
        let process = req
            .process
            .as_ref()
            .ok_or_else(|| invalid("no process".into()))?;
        if process.args.is_empty() {
            return Err(invalid("no command: process.args is empty".into()));
        }
        if let Some(r) = process
            .rlimits
            .iter()
            .find(|r| !init::known_rlimit(&r.kind))
        {
            return Err(invalid(format!("unknown rlimit {:?}", r.kind)));
        }
        if req.image_disk.is_empty() {
            return Err(invalid("no image_disk".into()));
        }
        if self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            return Err(ContainerError::Exists(id));
        }
        let eph = self
            .disks
            .ephemeral()
            .map_err(|source| ContainerError::Disk {
                id: id.clone(),
                source,
            })?;

        let mut mounts = Vec::new();
        for m in &req.mounts {
            if !m.destination.starts_with('/') {
                return Err(invalid(format!(
                    "mount destination {:?} is not absolute",
                    m.destination
                )));
            }
            let source = match m.kind() {
                MountKind::Volume => Some(self.volumes.source(&m.source, &m.sub_path).map_err(
                    |source| ContainerError::Volume {
                        id: id.clone(),
                        source,
                    },
                )?),
                MountKind::Tmpfs => None,
                MountKind::EphemeralDir => {
                    let rel = Path::new(&m.source);
                    if m.source.is_empty()
                        || !rel
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(invalid(format!(
                            "ephemeral dir {:?} must be a relative path without '..'",
                            m.source
                        )));
                    }
                    let dir = eph.join("dirs").join(rel);
                    std::fs::create_dir_all(&dir).map_err(|source| ContainerError::Io {
                        id: id.clone(),
                        op: format!("mkdir {}", dir.display()),
                        source,
                    })?;
                    Some(dir)
                }
                MountKind::Unspecified => {
                    return Err(invalid(format!("mount {}: no kind", m.destination)))
                }
            };
            mounts.push(BindMount {
                source,
                destination: m.destination.clone(),
                read_only: m.read_only,
                tmpfs_size_bytes: m.tmpfs_size_bytes,
            });
        }

        // Mounting may wait for a late disk to appear: off the runtime.
        let this = self.clone();
        let req2 = req.clone();
        let eph2 = eph.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&req2, &eph2))
            .await
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: "prepare".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let (rootfs, layer, cgroup) = prepared;

        let (exit, _) = watch::channel(None);
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        let c = Arc::new(Container {
            id: id.clone(),
            req,
            rootfs,
            layer,
            mounts,
            cgroup,
            state: Mutex::new(State::Created),
            exit,
            output: Arc::new(tokio::sync::Mutex::new(rx)),
            output_tx: Mutex::new(Some(tx)),
            stdin: tokio::sync::Mutex::new(None),
            pty: Mutex::new(None),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&id) {
            drop(map);
            self.teardown(&c);
            return Err(ContainerError::Exists(id));
        }
        map.insert(id.clone(), c);
        self.log.info(format!("container {id} created"));
        Ok(())
    }

    /// Image mount, overlay, cgroup; undone on failure.
    fn prepare(
        &self,
        req: &CreateContainerRequest,
        eph: &Path,
    ) -> Result<(PathBuf, PathBuf, Cgroup), ContainerError> {
        let id = &req.id;
        let io = |op: String| {
            move |source| ContainerError::Io {
                id: id.clone(),
                op,
                source,
            }
        };
        let image = self
            .disks
            .acquire_image(&req.image_disk)
            .map_err(|source| ContainerError::Disk {
                id: id.clone(),
                source,
            })?;
        let layer = eph.join("containers").join(id);
        let rootfs = Path::new(ROOTFS_ROOT).join(id).join("rootfs");
        let undo = |layer: &Path, rootfs: &Path| {
            let _ = umount2(&pts_dir(rootfs), MntFlags::MNT_DETACH);
            let _ = umount2(rootfs, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(layer);
            let _ = std::fs::remove_dir_all(rootfs.parent().unwrap_or(rootfs));
            self.disks.release_image(&req.image_disk);
        };
        let result = (|| {
            let _ = std::fs::remove_dir_all(&layer);
            for d in [layer.join("upper"), layer.join("work"), rootfs.clone()] {
                std::fs::create_dir_all(&d).map_err(io(format!("mkdir {}", d.display())))?;
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                layer.join("upper").display(),
                layer.join("work").display()
            );
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: format!("mount the overlay rootfs ({opts})"),
                source: e.into(),
            })?;
            let pts = pts_dir(&rootfs);
            std::fs::create_dir_all(&pts).map_err(io(format!("mkdir {}", pts.display())))?;
            mount(
                Some("devpts"),
                &pts,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            )
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: "mount the container's devpts".into(),
                source: e.into(),
            })?;
            let limits = req.limits.unwrap_or_default();
            let cg = Cgroup::create(&self.cgroup_parent, id, &limits)
                .map_err(io("create the cgroup".into()))?;
            Ok(cg)
        })();
        match result {
            Ok(cg) => Ok((rootfs, layer, cg)),
            Err(e) => {
                undo(&layer, &rootfs);
                Err(e)
            }
        }
    }

    /// Starts the container's process; returns its pid.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<i32, ContainerError> {
        let c = self.get(id)?;
        {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            if *st != State::Created {
                drop(st);
                return Err(c.wrong_state("it can only start once"));
            }
            *st = State::Starting;
        }
        let p = c.req.process.clone().unwrap_or_default();
        let stdio = match Stdio::new(
            p.tty,
            p.stdin,
            p.tty_rows as u16,
            p.tty_cols as u16,
            Some(&c.pts()),
        ) {
            Ok(s) => s,
            Err(e) => {
                c.set_state(State::Created);
                return Err(c.io("make stdio")(e));
            }
        };
        let privileged = c.req.privileged;
        let cfg = InitConfig {
            namespaces: Namespaces::New(RootConfig {
                rootfs: c.rootfs.clone(),
                pts: c.pts(),
                hostname: c.req.hostname.clone(),
                mounts: c.mounts.clone(),
                masked_paths: c.req.masked_paths.clone(),
                readonly_paths: c.req.readonly_paths.clone(),
                read_only_rootfs: c.req.read_only_rootfs,
                shm_size_bytes: c.req.shm_size_bytes,
                privileged,
            }),
            process: process_config(&p, &p, privileged),
        };
        let Stdio {
            child,
            ends:
                stdio::Ends {
                    out,
                    err,
                    input,
                    pty,
                },
        } = stdio;
        let mut spawned = match self.spawn_init(&cfg, child, &c.cgroup.procs_file()) {
            Ok(s) => s,
            Err(e) => {
                c.set_state(State::Created);
                return Err(c.io("spawn the container init")(e));
            }
        };
        let started = spawned.started().await;

        // The output flows whether or not the process started (a start
        // error may have printed something).
        let tx = c.output_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let t = tx.clone();
            tokio::spawn(stdio::pump(out, t, |data| OutputChunk {
                stream: OutputStream::Stdout as i32,
                data,
            }));
            if let Some(err) = err {
                tokio::spawn(stdio::pump(err, tx, |data| OutputChunk {
                    stream: OutputStream::Stderr as i32,
                    data,
                }));
            }
        }
        *c.stdin.lock().await = input;
        *c.pty.lock().unwrap_or_else(|p| p.into_inner()) = pty;

        let waiter = {
            let c = c.clone();
            let log = self.log.clone();
            async move {
                let status = spawned.finish().await;
                let oom = c.cgroup.oom_kills() > 0;
                let exit = exit_status(status, oom);
                // The namespace's init is gone, so is everything in it; make
                // sure of it for processes that left the PID namespace.
                let _ = c.cgroup.kill_all();
                log.info(format!(
                    "container {} exited: code {} ({})",
                    c.id, exit.exit_code, exit.reason
                ));
                c.set_state(State::Exited);
                c.exit.send_replace(Some(exit));
            }
        };
        match started {
            Ok(pid) => {
                c.set_state(State::Running { pid });
                tokio::spawn(waiter);
                self.log.info(format!("container {id} started, pid {pid}"));
                Ok(pid)
            }
            Err(msg) => {
                waiter.await;
                c.exit.send_modify(|e| {
                    if let Some(e) = e {
                        e.reason = "StartError".into();
                    }
                });
                Err(ContainerError::Start {
                    id: id.to_owned(),
                    msg,
                })
            }
        }
    }

    /// Spawns `vpod-init __container` into the cgroup with `stdio`.
    fn spawn_init(
        &self,
        cfg: &InitConfig,
        stdio: [OwnedFd; 3],
        cgroup_procs: &Path,
    ) -> std::io::Result<Spawned> {
        let json = serde_json::to_string(cfg).map_err(std::io::Error::other)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (rep_r, rep_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Above the fd numbers the child dup2s to, so nothing is clobbered.
        let high = |fd: &OwnedFd| -> std::io::Result<OwnedFd> {
            Ok(
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map(|raw| {
                    // SAFETY: F_DUPFD_CLOEXEC returned a new fd we own.
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
                })?,
            )
        };
        let err_w = high(&err_w)?;
        let rep_w = high(&rep_w)?;
        let procs = high(&OwnedFd::from(
            std::fs::OpenOptions::new().write(true).open(cgroup_procs)?,
        ))?;
        let (e, r, p) = (err_w.as_raw_fd(), rep_w.as_raw_fd(), procs.as_raw_fd());
        let [i, o, er] = stdio;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0("vpod-container")
            .arg(init::CONTAINER_INIT_ARG)
            .env_clear()
            .env(init::CONFIG_ENV, json)
            .stdin(i)
            .stdout(o)
            .stderr(er);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes raw syscalls on fds that stay open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Join the cgroup before anything runs, so limits hold from
                // the first instruction.
                if libc::write(p, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(e, init::ERROR_FD) < 0 || libc::dup2(r, init::REPORT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let pid = self.reaper.spawn(|| cmd.spawn())?;
        drop(cmd);
        drop((err_w, rep_w, procs));
        Ok(Spawned {
            pid,
            exited: self.reaper.watch(pid),
            err: stdio::prep(err_r)?,
            report: stdio::prep(rep_r)?,
            report_buf: Vec::new(),
        })
    }

    pub async fn wait(&self, id: &str) -> Result<ExitStatus, ContainerError> {
        let c = self.get(id)?;
        let mut rx = c.exit.subscribe();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map(|s| s.clone().unwrap_or_default())
            .unwrap_or_default();
        Ok(status)
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let State::Running { pid } = c.state() else {
            return Err(c.wrong_state("nothing to signal"));
        };
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::Invalid {
            id: id.to_owned(),
            msg: format!("bad signal {signal}"),
        })?;
        if all && sig == Signal::SIGKILL {
            return c.cgroup.kill_all().map_err(c.io("cgroup.kill"));
        }
        if all {
            for p in c.cgroup.pids() {
                let _ = kill(Pid::from_raw(p), sig);
            }
            return Ok(());
        }
        kill(Pid::from_raw(pid), sig).map_err(|e| ContainerError::Io {
            id: id.to_owned(),
            op: format!("signal {sig}"),
            source: e.into(),
        })
    }

    /// Signal, grace period, SIGKILL; the exit status.
    pub async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: i32,
    ) -> Result<ExitStatus, ContainerError> {
        let c = self.get(id)?;
        match c.state() {
            State::Created => {
                c.set_state(State::Exited);
                let status = ExitStatus {
                    exit_code: 0,
                    reason: "NeverStarted".into(),
                    finished_boottime_ns: boottime_ns(),
                    ..Default::default()
                };
                c.exit.send_replace(Some(status.clone()));
                return Ok(status);
            }
            State::Exited => return self.wait(id).await,
            State::Starting => return Err(c.wrong_state("wait for StartContainer first")),
            State::Running { .. } => {}
        }
        let sig = if signal == 0 { libc::SIGTERM } else { signal };
        let _ = self.kill(id, sig, false);
        if tokio::time::timeout(grace, self.wait(id)).await.is_err() {
            self.log.info(format!(
                "container {id} outlived its {grace:?} grace period: SIGKILL"
            ));
            let _ = c.cgroup.kill_all();
        }
        self.wait(id).await
    }

    /// Kills what is left and undoes `create`.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if c.state() == State::Starting {
            return Err(c.wrong_state("wait for StartContainer first"));
        }
        if matches!(c.state(), State::Running { .. }) {
            let _ = c.cgroup.kill_all();
            if tokio::time::timeout(REMOVE_WAIT, self.wait(id))
                .await
                .is_err()
            {
                return Err(c.wrong_state("and did not die after SIGKILL"));
            }
        }
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let this_disks = self.disks.clone();
        let c2 = c.clone();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            Self::teardown_with(&this_disks, &c2, &log);
        })
        .await
        .map_err(|e| ContainerError::Io {
            id: id.to_owned(),
            op: "remove".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.log.info(format!("container {id} removed"));
        Ok(())
    }

    fn teardown(&self, c: &Container) {
        Self::teardown_with(&self.disks, c, &self.log)
    }

    fn teardown_with(disks: &Disks, c: &Container, log: &AgentLog) {
        let _ = umount2(&c.pts(), MntFlags::MNT_DETACH);
        if let Err(e) = umount2(c.rootfs.as_path(), MntFlags::MNT_DETACH) {
            log.warn(format!("container {}: unmount rootfs: {e}", c.id));
        }
        if let Some(dir) = c.rootfs.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Err(e) = std::fs::remove_dir_all(&c.layer) {
            log.warn(format!("container {}: remove writable layer: {e}", c.id));
        }
        if let Err(e) = c.cgroup.destroy() {
            log.warn(format!("container {}: remove cgroup: {e}", c.id));
        }
        disks.release_image(&c.req.image_disk);
    }

    pub fn list(&self) -> Vec<ContainerInfo> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ContainerInfo> = map
            .values()
            .map(|c| {
                let (state, pid) = match c.state() {
                    State::Created | State::Starting => (ContainerState::Created, 0),
                    State::Running { pid } => (ContainerState::Running, pid as u32),
                    State::Exited => (ContainerState::Exited, 0),
                };
                ContainerInfo {
                    id: c.id.clone(),
                    state: state as i32,
                    pid,
                    exit: c.exit.borrow().clone(),
                    args: c
                        .req
                        .process
                        .as_ref()
                        .map(|p| p.args.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStatsResponse, ContainerError> {
        let c = self.get(id)?;
        Ok(ContainerStatsResponse {
            cpu_usage_ns: c.cgroup.cpu_usage_ns(),
            memory_bytes: c.cgroup.memory_bytes(),
            memory_peak_bytes: c.cgroup.memory_peak_bytes(),
            writable_layer_bytes: dir_bytes(&c.layer.join("upper")),
            timestamp_boottime_ns: boottime_ns(),
            pids: c.cgroup.pids().len() as u32,
        })
    }

    /// The receiver of the container's output; one attacher at a time.
    pub fn attach(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<mpsc::Receiver<OutputChunk>>, ContainerError> {
        let c = self.get(id)?;
        c.output
            .clone()
            .try_lock_owned()
            .map_err(|_| ContainerError::State {
                id: id.to_owned(),
                state: "attached",
                what: "one attacher at a time",
            })
    }

    /// Writes to the container's stdin; `close` closes it afterwards.
    pub async fn write_stdin(
        &self,
        id: &str,
        data: &[u8],
        close: bool,
    ) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let mut stdin = c.stdin.lock().await;
        let Some(fd) = stdin.as_ref() else {
            return Err(c.wrong_state("and its stdin is closed (create it with stdin)"));
        };
        if !data.is_empty() {
            stdio::write_all(fd, data)
                .await
                .map_err(c.io("write stdin"))?;
        }
        if close && c.pty.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            *stdin = None;
        }
        Ok(())
    }

    /// Replaces the container's cgroup limits (kubelet's in-place resize).
    pub fn update(&self, id: &str, limits: &Limits) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        c.cgroup
            .apply(limits, true)
            .map_err(c.io("update the cgroup limits"))
    }

    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let pty = c.pty.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(pty) = pty else {
            return Err(c.wrong_state("without a TTY"));
        };
        stdio::resize(&pty, rows, cols).map_err(c.io("resize the tty"))
    }

    /// Starts a process in a running container: its stdio, and a handle
    /// that resolves to its exit status.
    pub async fn exec(
        self: &Arc<Self>,
        id: &str,
        p: &Process,
    ) -> Result<(ExecHandle, stdio::Ends), ContainerError> {
        let c = self.get(id)?;
        let State::Running { pid } = c.state() else {
            return Err(c.wrong_state("exec needs a running container"));
        };
        if p.args.is_empty() {
            return Err(ContainerError::Invalid {
                id: id.to_owned(),
                msg: "exec: no command".into(),
            });
        }
        let base = c.req.process.clone().unwrap_or_default();
        let mut proc_cfg = process_config(&base, p, c.req.privileged);
        proc_cfg.env = base.env.clone();
        proc_cfg.env.extend(p.env.iter().cloned());
        let stdio = Stdio::new(
            p.tty,
            p.stdin,
            p.tty_rows as u16,
            p.tty_cols as u16,
            Some(&c.pts()),
        )
        .map_err(c.io("make exec stdio"))?;
        let cfg = InitConfig {
            namespaces: Namespaces::Join { pid },
            process: proc_cfg,
        };
        let Stdio { child, ends } = stdio;
        let mut spawned = self
            .spawn_init(&cfg, child, &c.cgroup.procs_file())
            .map_err(c.io("spawn exec"))?;
        let pid = match spawned.started().await {
            Ok(pid) => pid,
            Err(msg) => {
                let _ = spawned.finish().await;
                return Err(ContainerError::Start {
                    id: id.to_owned(),
                    msg: format!("exec: {msg}"),
                });
            }
        };
        Ok((ExecHandle { spawned, pid }, ends))
    }
}

#[derive(Debug)]
pub struct ExecHandle {
    spawned: Spawned,
    /// The exec'd process (guest pid namespace).
    pid: i32,
}

impl ExecHandle {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub async fn wait(self) -> ExitStatus {
        exit_status(self.spawned.finish().await, false)
    }
}

fn pts_dir(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("pts")
}

/// The process config for the container's main process (`base` == `p`) or
/// an exec (`p` brings args, cwd, tty; identity and confinement are the
/// container's).
fn process_config(base: &Process, p: &Process, privileged: bool) -> ProcessConfig {
    ProcessConfig {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: if p.cwd.is_empty() {
            base.cwd.clone()
        } else {
            p.cwd.clone()
        },
        uid: base.uid,
        gid: base.gid,
        additional_gids: base.additional_gids.clone(),
        tty: p.tty,
        capabilities: (!privileged).then(|| base.capabilities.clone()),
        rlimits: base
            .rlimits
            .iter()
            .map(|r| (r.kind.clone(), r.soft, r.hard))
            .collect(),
        no_new_privileges: base.no_new_privileges,
        seccomp: !privileged && base.seccomp() == SeccompProfile::RuntimeDefault,
        oom_score_adj: base.oom_score_adj,
    }
}

/// What the container's init reported, as Kubernetes names it.
fn exit_status(s: InitStatus, oom: bool) -> ExitStatus {
    let (code, signal) = match s {
        InitStatus::Reported { code, signal } => (code, signal),
        InitStatus::Wait(WaitStatus::Exited(_, code)) => (code, 0),
        InitStatus::Wait(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, sig as i32),
        InitStatus::Wait(_) | InitStatus::Lost => (255, 0),
    };
    let reason = if oom && signal == libc::SIGKILL {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ExitStatus {
        exit_code: code,
        signal,
        oom_killed: reason == "OOMKilled",
        finished_boottime_ns: boottime_ns(),
        reason: reason.into(),
    }
}

#[derive(Debug)]
enum InitStatus {
    Reported { code: i32, signal: i32 },
    Wait(WaitStatus),
    Lost,
}

/// A spawned container init: its start result, then its exit.
#[derive(Debug)]
struct Spawned {
    pid: i32,
    exited: tokio::sync::oneshot::Receiver<WaitStatus>,
    err: AsyncEnd,
    report: AsyncEnd,
    report_buf: Vec<u8>,
}

impl Spawned {
    /// The container process's pid, or the start error it wrote.
    async fn started(&mut self) -> Result<i32, String> {
        let mut msg = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdio::read(&self.err, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => msg.extend_from_slice(&buf[..n]),
            }
        }
        if !msg.is_empty() {
            return Err(String::from_utf8_lossy(&msg).into_owned());
        }
        match self.next_report().await {
            Some(line) => line
                .strip_prefix("pid ")
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("container init reported {line:?} instead of a pid")),
            None => Err(format!(
                "container init (pid {}) ended before reporting a pid",
                self.pid
            )),
        }
    }

    async fn next_report(&mut self) -> Option<String> {
        let mut buf = [0u8; 256];
        loop {
            if let Some(i) = self.report_buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.report_buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            match stdio::read(&self.report, &mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.report_buf.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The reported exit, else the init's own wait status.
    async fn finish(mut self) -> InitStatus {
        let mut reported = None;
        while let Some(line) = self.next_report().await {
            let mut it = line.split_whitespace();
            if it.next() == Some("exit") {
                let code = it.next().and_then(|v| v.parse().ok());
                let signal = it.next().and_then(|v| v.parse().ok());
                if let (Some(code), Some(signal)) = (code, signal) {
                    reported = Some(InitStatus::Reported { code, signal });
                }
            }
        }
        let waited = self.exited.await;
        match (reported, waited) {
            (Some(r), _) => r,
            (None, Ok(w)) => InitStatus::Wait(w),
            (None, Err(_)) => InitStatus::Lost,
        }
    }
}

/// Bytes in files under `dir` (the writable layer's usage).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(md) if md.is_dir() => stack.push(e.path()),
                Ok(md) => total += md.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_get_kubernetes_reasons() {
        let r = |code, signal| InitStatus::Reported { code, signal };
        assert_eq!(exit_status(r(0, 0), false).reason, "Completed");
        assert_eq!(exit_status(r(3, 0), false).reason, "Error");
        let oom = exit_status(r(137, 9), true);
        assert_eq!(
            (oom.exit_code, oom.oom_killed, oom.reason.as_str()),
            (137, true, "OOMKilled")
        );
        // A group that saw an OOM kill but whose process exited by itself.
        assert_eq!(exit_status(r(1, 0), true).reason, "Error");
        let pid = Pid::from_raw(1);
        let killed = exit_status(
            InitStatus::Wait(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            false,
        );
        assert_eq!((killed.exit_code, killed.signal), (137, 9));
        assert!(valid_id("app-1.x_y"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
