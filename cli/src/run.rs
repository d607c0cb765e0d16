//! `vpod run`: one pod with one container, from an image in the store.
//!
//! Foreground: this process boots the pod's VM (in-process), streams the
//! container's output, exits with its code and removes everything. `-d`:
//! the same work runs in a detached supervisor process (`vpod __supervise`)
//! that keeps a record under `<run-dir>/pods/<id>` for `ps`, `logs`, `exec`,
//! `stop` and `rm`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use vpod_agent_api::pb::{
    ContainerRef, CreateContainerRequest, ExitStatus, KillContainerRequest, Limits, Mount,
    MountKind, OutputStream, Process, ResizeTtyRequest, SeccompProfile, StdinChunk, VolumeMedium,
};
use vpod_images::Store;
use vpod_sandbox::volumes::{self, HostVolume};
use vpod_sandbox::{defaults, ImageDisk, Pod, PodConfig};

use crate::logfile::{self, CappedLog};
use crate::quantity::{parse_bytes, parse_cpus};
use crate::record::{self, Record, Status};
use crate::term;

/// The one container of a `vpod run` pod.
pub const CONTAINER_ID: &str = "app";
/// Serial of the image disk.
const IMAGE_SERIAL: &str = "img0";
/// How long SIGTERM/`vpod stop` lets the container wind down.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// `--ephemeral-dir`'s default.
pub const DEFAULT_EPHEMERAL_DIR: &str = "/var/lib/vpod/ephemeral";

fn default_ephemeral_dir() -> PathBuf {
    DEFAULT_EPHEMERAL_DIR.into()
}

#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct RunArgs {
    /// Memory limit of the container (256Mi, 1Gi, ...); sizes the VM.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit (1, 0.5, 500m); sizes the VM.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Size of the pod's ephemeral disk (writable layer, emptyDirs).
    #[arg(long, default_value = "1Gi")]
    pub ephemeral_storage: String,
    /// Where pods' ephemeral disks go, one dir per pod (a real disk: every block the guest
    /// writes lands there, so not a tmpfs such as /run).
    #[arg(long, env = "VPOD_EPHEMERAL_DIR", default_value = DEFAULT_EPHEMERAL_DIR)]
    #[serde(default = "default_ephemeral_dir")]
    pub ephemeral_dir: PathBuf,
    /// NAME=DIR[:DEST]: the files of host DIR as a secret in guest RAM,
    /// mounted read-only at DEST (default /run/secrets/NAME); re-pushed when
    /// they change.
    #[arg(long = "secret", value_name = "NAME=DIR[:DEST]")]
    pub secrets: Vec<String>,
    /// NAME=DIR[:DEST]: the files of host DIR as a configMap on the pod's
    /// disk, read-only at DEST (default /etc/config/NAME).
    #[arg(long = "configmap", value_name = "NAME=DIR[:DEST]")]
    pub configmaps: Vec<String>,
    /// K=V added to the image's environment.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Give the container a TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run in the background; print the pod id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Pod id (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// UID[:GID] to run as (default: the image's numeric user, else 0).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory in the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// All capabilities and no seccomp, inside the guest only.
    #[arg(long)]
    pub privileged: bool,
    /// Guest kernel (vmlinux).
    #[arg(
        long,
        env = "VPOD_KERNEL",
        default_value = "/var/lib/vpod/guest/vmlinux"
    )]
    pub kernel: PathBuf,
    /// Guest initramfs with vpod-init.
    #[arg(
        long,
        env = "VPOD_INITRD",
        default_value = "/var/lib/vpod/guest/initramfs.cpio"
    )]
    pub initrd: PathBuf,
    /// Image reference (name or digest) in the store.
    pub image: String,
    /// Command and arguments (after the image's entrypoint).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What a pod start needs, resolved and checked before anything boots.
struct Plan {
    pod: PodConfig,
    container: CreateContainerRequest,
    volumes: Vec<HostVolume>,
}

fn split_volume(
    spec: &str,
    flag: &str,
    default_root: &str,
) -> Result<(String, PathBuf, String), String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--{flag} {spec:?}: expected NAME=DIR[:DEST]"))?;
    let (dir, dest) = match rest.split_once(':') {
        Some((d, dest)) => (d, dest.to_owned()),
        None => (rest, format!("{default_root}/{name}")),
    };
    if !dest.starts_with('/') {
        return Err(format!("--{flag} {spec:?}: DEST must be an absolute path"));
    }
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(format!(
            "--{flag} {spec:?}: {} is not a directory",
            dir.display()
        ));
    }
    Ok((name.to_owned(), dir, dest))
}

fn parse_user(s: &str) -> Option<(u32, u32)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().ok()?;
    let gid = match g {
        Some(g) => g.parse().ok()?,
        None => uid,
    };
    Some((uid, gid))
}

fn plan(args: &RunArgs, store: &Store, id: &str, vm_dir: &Path) -> Result<Plan, String> {
    let memory = args
        .memory
        .as_deref()
        .map(|m| parse_bytes(m).map_err(|e| format!("--memory {e}")))
        .transpose()?;
    let cpus = args
        .cpus
        .as_deref()
        .map(|c| parse_cpus(c).map_err(|e| format!("--cpus {e}")))
        .transpose()?;
    let ephemeral =
        parse_bytes(&args.ephemeral_storage).map_err(|e| format!("--ephemeral-storage {e}"))?;
    if let Some(m) = memory {
        if m < vpod_sandbox::sizing::MIN_CONTAINER_MIB << 20 {
            return Err(format!(
                "--memory {}: below the {} MiB a container needs",
                args.memory.as_deref().unwrap_or(""),
                vpod_sandbox::sizing::MIN_CONTAINER_MIB
            ));
        }
    }
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(format!("--env {e:?}: expected K=V"));
        }
    }

    let digest = store.resolve(&args.image).map_err(|e| {
        format!(
            "image {:?}: {e} (pull it with `vpod image pull` or import it with `vpod image import`)",
            args.image
        )
    })?;
    let disk = store
        .ensure_block_image(&digest, vpod_images::FsType::detect())
        .map_err(|e| format!("image {}: block image: {e}", args.image))?;
    let (_, _, config) = store
        .image_config(&digest)
        .map_err(|e| format!("image {}: {e}", args.image))?;
    let rc = config.config.unwrap_or_default();

    let mut argv: Vec<String> = rc.entrypoint.clone().unwrap_or_default();
    if args.command.is_empty() {
        argv.extend(rc.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(args.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(format!(
            "image {} has no entrypoint or command: give one after the image",
            args.image
        ));
    }
    let mut env: Vec<String> = rc.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", defaults::PATH));
    }
    env.push(format!("HOSTNAME={id}"));
    if args.tty {
        env.push("TERM=xterm".into());
    }
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let user = args.user.clone().or(rc.user.clone()).unwrap_or_default();
    let (uid, gid) = if user.is_empty() {
        (0, 0)
    } else {
        parse_user(&user).ok_or_else(|| {
            format!("user {user:?}: only numeric UID[:GID] is supported (use --user)")
        })?
    };

    let mut mounts = Vec::new();
    let mut vols = Vec::new();
    for (flag, specs, root, medium) in [
        (
            "secret",
            &args.secrets,
            "/run/secrets",
            VolumeMedium::Memory,
        ),
        (
            "configmap",
            &args.configmaps,
            "/etc/config",
            VolumeMedium::Disk,
        ),
    ] {
        for spec in specs {
            let (name, dir, dest) = split_volume(spec, flag, root)?;
            let vname = format!("{flag}-{name}");
            if !vpod_sandbox_volume_name_ok(&vname) {
                return Err(format!("--{flag} {spec:?}: NAME must be [A-Za-z0-9_.-]"));
            }
            mounts.push(Mount {
                destination: dest,
                kind: MountKind::Volume as i32,
                source: vname.clone(),
                read_only: true,
                ..Default::default()
            });
            vols.push(HostVolume {
                name: vname,
                dir,
                medium,
            });
        }
    }

    let limits = vpod_sandbox::Limits {
        memory_bytes: memory,
        cpus,
    };
    let size = vpod_sandbox::VmSize::for_pod(&[limits], host_cpus());
    let (rows, cols) = if args.tty {
        term::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let container = CreateContainerRequest {
        id: CONTAINER_ID.into(),
        image_disk: IMAGE_SERIAL.into(),
        process: Some(Process {
            args: argv,
            env,
            cwd: args
                .workdir
                .clone()
                .or(rc.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            additional_gids: Vec::new(),
            tty: args.tty,
            stdin: args.interactive,
            capabilities: defaults::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            rlimits: Vec::new(),
            no_new_privileges: false,
            seccomp: SeccompProfile::RuntimeDefault as i32,
            tty_rows: rows,
            tty_cols: cols,
            oom_score_adj: None,
        }),
        hostname: id.into(),
        mounts,
        limits: Some(Limits {
            memory_bytes: memory.unwrap_or(0),
            cpu_quota_us: cpus.map(|c| (c * 100_000.0).round() as u64).unwrap_or(0),
            cpu_period_us: 100_000,
            cpu_weight: 0,
            pids: 0,
        }),
        read_only_rootfs: args.read_only,
        masked_paths: defaults::MASKED_PATHS
            .iter()
            .map(|p| p.to_string())
            .collect(),
        readonly_paths: defaults::READONLY_PATHS
            .iter()
            .map(|p| p.to_string())
            .collect(),
        shm_size_bytes: 0,
        privileged: args.privileged,
    };
    Ok(Plan {
        pod: PodConfig {
            id: id.into(),
            dir: vm_dir.to_path_buf(),
            ephemeral_dir: Some(args.ephemeral_dir.join(id)),
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            ephemeral_bytes: ephemeral,
            images: vec![ImageDisk {
                serial: IMAGE_SERIAL.into(),
                path: disk.path,
            }],
            spare_slots: 0,
            hostname: id.into(),
            boot_timeout: vpod_sandbox::pod::DEFAULT_BOOT_TIMEOUT,
            net: None,
        },
        container,
        volumes: vols,
    })
}

fn vpod_sandbox_volume_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `vpod run`. Returns the process exit code.
pub async fn run(args: RunArgs, store: &Store, root: &Path, run_dir: &Path) -> Result<u8, String> {
    let id = match &args.name {
        Some(n) => n.clone(),
        None => record::new_id(),
    };
    if !vpod_sandbox::pod::valid_pod_id(&id) {
        return Err(format!("pod name {id:?}: use 1-40 of [a-z0-9-]"));
    }
    let rec = Record::create(run_dir, &id, &args).map_err(|e| e.to_string())?;
    // Resolve everything before booting (or detaching), so bad input fails here.
    let planned = plan(&args, store, &id, &rec.vm_dir());
    let planned = match planned {
        Ok(p) => p,
        Err(e) => {
            rec.remove();
            return Err(e);
        }
    };
    if args.detach {
        drop(planned);
        return detach(rec, root, run_dir).await;
    }
    let result = execute(planned, &rec, Output::Terminal, args.interactive, args.tty).await;
    rec.remove();
    let status = result?;
    if status.oom_killed {
        eprintln!("vpod: container OOMKilled (memory limit)");
    }
    Ok(status.exit_code.clamp(0, 255) as u8)
}

/// Starts `vpod __supervise <record>` detached and waits for its word.
async fn detach(rec: Record, root: &Path, run_dir: &Path) -> Result<u8, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("find the vpod binary: {e}"))?;
    let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(rec.dir().join("supervisor.log")).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(run_dir)
        .arg("__supervise")
        .arg(rec.dir())
        .stdin(std::process::Stdio::null())
        .stdout(w)
        .stderr(log);
    // SAFETY: setsid in the child before exec: no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start the pod supervisor: {e}"))?;
    drop(cmd);
    let word = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { r }, &mut s);
        s
    })
    .await
    .map_err(|e| e.to_string())?;
    if word.trim() == "started" {
        println!("{}", rec.id());
        Ok(0)
    } else {
        // The supervisor failed before the container ran: reap it, clean up.
        let status = child.wait().map_err(|e| e.to_string());
        let log = std::fs::read_to_string(rec.dir().join("supervisor.log")).unwrap_or_default();
        rec.remove();
        Err(did_not_start(child.id(), word.trim(), status, &log))
    }
}

/// Lines of the supervisor's log an early death reports.
const LOG_TAIL_LINES: usize = 20;

/// Why `run -d` failed, from what the supervisor said (`word`), how it
/// ended and its log: never an empty message.
fn did_not_start(
    pid: u32,
    word: &str,
    status: Result<std::process::ExitStatus, String>,
    log: &str,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    if !word.is_empty() {
        return format!("pod did not start: {word}");
    }
    let lines: Vec<&str> = log.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    let ended = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => format!(
                "was killed by signal {sig} ({})",
                nix::sys::signal::Signal::try_from(sig).map_or("?", |s| s.as_str())
            ),
            (Some(0), _) => "exited (status 0)".to_owned(),
            // An error exit: its own message says why, if it wrote one.
            (Some(c), _) if !tail.is_empty() => {
                return format!("pod did not start: {tail} (supervisor exit status {c})")
            }
            (Some(c), _) => format!("exited with status {c}"),
            (None, None) => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    };
    let mut msg =
        format!("pod did not start: the supervisor (pid {pid}) {ended} before the pod started");
    if !tail.is_empty() {
        msg.push_str(&format!("; its log:\n{tail}"));
    }
    msg
}

/// `vpod __supervise <record>`: the detached side of `run -d`.
pub async fn supervise(dir: &Path, store: &Store) -> Result<u8, String> {
    let rec = Record::open(dir).map_err(|e| e.to_string())?;
    rec.set_supervisor_self().map_err(|e| e.to_string())?;
    let args = rec.args().map_err(|e| e.to_string())?;
    let planned = plan(&args, store, rec.id(), &rec.vm_dir())?;
    let status = execute(planned, &rec, Output::Supervisor, false, false).await?;
    rec.set_status(&Status::from_exit(&status))
        .map_err(|e| e.to_string())?;
    Ok(0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    /// Also to our stdout/stderr.
    Terminal,
    /// Only to the record's log; say "started" on stdout once running.
    Supervisor,
}

/// Boots, runs the container to its end, shuts the pod down.
async fn execute(
    plan: Plan,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let t0 = Instant::now();
    let pod = Arc::new(Pod::boot(plan.pod).await.map_err(|e| e.to_string())?);
    let booted = t0.elapsed();
    let result = run_container(
        &pod,
        plan.container,
        plan.volumes,
        rec,
        output,
        interactive,
        tty,
    )
    .await;
    tracing::info!(boot_ms = booted.as_millis() as u64, "pod {} done", pod.id());
    match Arc::try_unwrap(pod) {
        Ok(p) => {
            p.shutdown(SHUTDOWN_TIMEOUT).await;
        }
        Err(arc) => arc.stop_now(),
    }
    result
}

async fn run_container(
    pod: &Arc<Pod>,
    container: CreateContainerRequest,
    vols: Vec<HostVolume>,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let mut watched = Vec::new();
    for v in vols {
        let fp = volumes::push(pod, &v).await.map_err(|e| e.to_string())?;
        watched.push((v, fp));
    }
    let watcher = tokio::spawn(volumes::watch(
        pod.clone(),
        watched,
        volumes::DEFAULT_POLL,
        |v, r| match r {
            Ok(gen) => tracing::info!("volume {} updated (generation {gen})", v.name),
            Err(e) => tracing::warn!("volume {} update failed: {e}", v.name),
        },
    ));
    let result = drive(pod, container, rec, output, interactive, tty).await;
    watcher.abort();
    let _ = watcher.await;
    result
}

async fn drive(
    pod: &Arc<Pod>,
    container: CreateContainerRequest,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let id = container.id.clone();
    pod.create_container(container)
        .await
        .map_err(|e| e.to_string())?;
    let mut agent = pod.agent();
    let mut out = agent
        .attach(ContainerRef { id: id.clone() })
        .await
        .map_err(|s| format!("attach to container {id}: {}", s.message()))?
        .into_inner();
    // The guest decides how much it prints: the host file is capped (two generations).
    let mut log = CappedLog::open(&rec.log_path(), logfile::DEFAULT_MAX_BYTES)
        .map_err(|e| format!("open {}: {e}", rec.log_path().display()))?;
    let copier = tokio::spawn(async move {
        while let Ok(Some(chunk)) = out.message().await {
            let _ = log.write_all(&chunk.data);
            if output == Output::Terminal {
                if chunk.stream == OutputStream::Stderr as i32 {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&chunk.data);
                    let _ = e.flush();
                } else {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&chunk.data);
                    let _ = o.flush();
                }
            }
        }
        log.dropped()
    });
    let _raw = (output == Output::Terminal && tty).then(term::RawMode::enter);
    pod.start_container(&id).await.map_err(|e| e.to_string())?;
    if output == Output::Supervisor {
        // The parent prints the id and returns; our stdout is done.
        println!("started");
        let _ = std::io::stdout().flush();
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto fd 1, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), 1) };
        }
    }
    if interactive {
        tokio::spawn(forward_stdin(pod.agent(), id.clone()));
    }
    if tty && output == Output::Terminal {
        tokio::spawn(forward_resizes(pod.agent(), id.clone()));
    }
    let signals = tokio::spawn(stop_on_signals(pod.clone(), id.clone()));
    let status = pod.wait_container(&id).await.map_err(|e| e.to_string());
    signals.abort();
    let _ = signals.await;
    if let Ok(dropped) = copier.await {
        if dropped > 0 {
            tracing::info!("container.log: {dropped} bytes of older output rotated away");
        }
    }
    status
}

/// Host stdin → the container's stdin; EOF closes it.
async fn forward_stdin(
    mut agent: vpod_agent_api::AgentClient<vpod_agent_api::AgentChannel>,
    id: String,
) {
    let (tx, rx) = mpsc::channel::<StdinChunk>(16);
    let first = StdinChunk {
        id,
        data: Vec::new(),
        close_on_end: true,
    };
    let _ = tx.send(first).await;
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdin = std::io::stdin().lock();
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = StdinChunk {
                        id: String::new(),
                        data: buf[..n].to_vec(),
                        close_on_end: false,
                    };
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let _ = agent
        .write_stdin(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
}

async fn forward_resizes(
    mut agent: vpod_agent_api::AgentClient<vpod_agent_api::AgentChannel>,
    id: String,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((rows, cols)) = term::size() {
            let _ = agent
                .resize_tty(ResizeTtyRequest {
                    id: id.clone(),
                    rows,
                    cols,
                })
                .await;
        }
    }
}

/// SIGINT/SIGTERM: stop the container (grace period); a second one kills it.
async fn stop_on_signals(pod: Arc<Pod>, id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    let p = pod.clone();
    let i = id.clone();
    tokio::spawn(async move {
        let _ = p.stop_container(&i, DEFAULT_STOP_GRACE).await;
    });
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    let _ = pod
        .agent()
        .kill_container(KillContainerRequest {
            id,
            signal: libc::SIGKILL,
            all: true,
        })
        .await;
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 14: a supervisor that died before the pod started is
    /// always explained, whatever it left.
    #[test]
    fn did_not_start_always_says_why() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::ExitStatus;
        let killed = did_not_start(7, "", Ok(ExitStatus::from_raw(9)), "");
        assert_eq!(
            killed,
            "pod did not start: the supervisor (pid 7) was killed by signal 9 (SIGKILL) before the pod started"
        );
        let failed = did_not_start(
            7,
            "",
            Ok(ExitStatus::from_raw(1 << 8)),
            "vpod: error: no kernel\n",
        );
        assert_eq!(
            failed,
            "pod did not start: vpod: error: no kernel (supervisor exit status 1)"
        );
        let silent = did_not_start(7, "", Ok(ExitStatus::from_raw(3 << 8)), "");
        assert!(
            silent.ends_with("(pid 7) exited with status 3 before the pod started"),
            "{silent}"
        );
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = did_not_start(7, "", Ok(ExitStatus::from_raw(6)), &long);
        assert!(
            tail.contains("SIGABRT") && tail.ends_with("line 99"),
            "{tail}"
        );
        assert!(
            !tail.contains("line 79\n") && tail.contains("line 80\n"),
            "{tail}"
        );
        assert_eq!(
            did_not_start(7, "boom", Err("x".into()), ""),
            "pod did not start: boom"
        );
    }

    #[test]
    fn users_and_volume_specs() {
        assert_eq!(parse_user("1000"), Some((1000, 1000)));
        assert_eq!(parse_user("1000:50"), Some((1000, 50)));
        assert_eq!(parse_user("nobody"), None);
        let dir = std::env::temp_dir();
        let d = dir.display();
        let (n, p, dest) = split_volume(&format!("tok={d}"), "secret", "/run/secrets").unwrap();
        assert_eq!((n.as_str(), dest.as_str()), ("tok", "/run/secrets/tok"));
        assert_eq!(p, dir);
        let (_, _, dest) = split_volume(&format!("tok={d}:/x/y"), "secret", "/r").unwrap();
        assert_eq!(dest, "/x/y");
        assert!(split_volume("tok", "secret", "/r").is_err());
        assert!(split_volume("tok=/nonexistent-dir", "secret", "/r")
            .unwrap_err()
            .contains("not a directory"));
        assert!(split_volume(&format!("tok={d}:rel"), "secret", "/r").is_err());
    }
}
