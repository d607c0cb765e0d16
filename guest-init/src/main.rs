//! vpod-init binary: PID 1 of a vpod guest (or, elsewhere, the agent server
//! alone for tests: `vpod-init --listen-unix PATH`).
//!
//! Order matters for boot latency: stamp the start, set the system up,
//! start a single-threaded runtime, bind the listener, announce. Nothing
//! slow (disks, network beyond `lo`) happens before the agent listens.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use vpod_agent_api::pb::ShutdownKind;
use vpod_init::args::{Args, Listen};
use vpod_init::clock::Stamp;
use vpod_init::container::init::CONTAINER_INIT_ARG;
use vpod_init::log::{AgentLog, DEFAULT_CAPACITY, LEVEL_NOTICE};
use vpod_init::reaper::Reaper;
use vpod_init::{power, reaper, serve, setup, AgentConfig, AgentService, ServeError};

/// How long open connections may take to finish after a Shutdown request.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// Bounds of the pause between vsock bind attempts.
const BIND_RETRY_MIN: Duration = Duration::from_millis(10);
const BIND_RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("build the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listen on unix socket {path}: {source}")]
    ListenUnix {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn main() {
    let init_start = Stamp::now();
    // The same binary is each container's init (see container::init).
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(CONTAINER_INIT_ARG)) {
        vpod_init::container::init::main()
    }
    if std::env::args_os().nth(1).as_deref()
        == Some(OsStr::new(vpod_init::container::podns::POD_NS_ARG))
    {
        vpod_init::container::podns::main()
    }
    // PID 1 reaps orphans wherever it runs; only the guest's init (PID 1 on
    // the initramfs) sets the system up and powers it off.
    let pid1 = std::process::id() == 1;
    let guest = pid1 && setup::root_is_initramfs();
    if guest {
        // A panic in PID 1 would panic the kernel and, with panic=-1, loop
        // through reboots: report it and power off instead.
        std::panic::set_hook(Box::new(|info| {
            let _ = writeln!(std::io::stderr(), "vpod-init: fatal: {info}");
            power::go_down(ShutdownKind::Poweroff)
        }));
    }

    let args = match Args::parse(std::env::args_os().skip(1), pid1) {
        Ok(args) => args,
        Err(e) => fatal(guest, e),
    };
    let log = Arc::new(AgentLog::new(DEFAULT_CAPACITY, LEVEL_NOTICE));
    if !args.ignored.is_empty() {
        log.info(format!("ignored arguments: {}", args.ignored.join(" ")));
    }

    if guest {
        if let Err(e) = setup::setup_system(&log) {
            fatal(guest, e);
        }
    } else if pid1 {
        log.warn("PID 1 outside an initramfs: no system setup, exit instead of poweroff");
    }
    log.info(format!(
        "init started {:.3} ms after the kernel; setup done at init +{:.3} ms",
        init_start.boottime_ns as f64 / 1e6,
        Stamp::now().ms_since(&init_start)
    ));

    // One thread: the agent is I/O-bound and a guest often has one vCPU;
    // it also starts faster than a thread pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(guest, InitError::Runtime(e)),
    };
    log.info(format!(
        "runtime ready at init +{:.3} ms",
        Stamp::now().ms_since(&init_start)
    ));

    match runtime.block_on(run(args, init_start, log.clone(), pid1)) {
        Ok(kind) if guest => power::go_down(kind),
        Ok(kind) => {
            log.notice(format!(
                "shutdown ({}) requested; not the guest's init, exiting",
                kind.as_str_name()
            ));
            std::process::exit(0)
        }
        Err(e) => fatal(guest, e),
    }
}

async fn run(
    args: Args,
    init_start: Stamp,
    log: Arc<AgentLog>,
    pid1: bool,
) -> Result<ShutdownKind, InitError> {
    // Outside PID 1 it still waits for its own children (containers).
    let _ = pid1;
    let reaper = Reaper::new();
    tokio::spawn(reaper::reap_children(reaper.clone(), log.clone()));
    let config = |agent_listening| AgentConfig {
        init_start,
        agent_listening,
        kmsg_path: args.kmsg.clone(),
        proc_root: args.proc_root.clone(),
        log: log.clone(),
        reaper: reaper.clone(),
    };

    match &args.listen {
        Listen::Vsock(port) => {
            let listener = bind_vsock(*port, &log).await;
            let listening = Stamp::now();
            announce(&log, &format!("vsock port {port}"), init_start, listening);
            tokio::spawn(vpod_init::ready::notify_host(listening, log.clone()));
            let (service, shutdown) = AgentService::new(config(listening));
            Ok(serve(service, shutdown, listener.incoming(), SHUTDOWN_DRAIN).await?)
        }
        Listen::Unix(path) => {
            let listener = UnixListener::bind(path).map_err(|source| InitError::ListenUnix {
                path: path.display().to_string(),
                source,
            })?;
            let listening = Stamp::now();
            announce(
                &log,
                &format!("unix socket {}", path.display()),
                init_start,
                listening,
            );
            let (service, shutdown) = AgentService::new(config(listening));
            let incoming = UnixListenerStream::new(listener);
            let result = serve(service, shutdown, incoming, SHUTDOWN_DRAIN).await;
            remove_socket(path);
            Ok(result?)
        }
    }
}

/// Binds the agent's vsock port, retrying until it works: without a
/// virtio-vsock device (or transport) bind fails, and the agent is useless
/// but the guest should still say why and stay debuggable.
async fn bind_vsock(port: u32, log: &AgentLog) -> VsockListener {
    let mut delay = BIND_RETRY_MIN;
    let mut failures = 0u32;
    loop {
        match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)) {
            Ok(listener) => {
                if failures > 0 {
                    log.notice(format!(
                        "vsock port {port} bound after {failures} failed attempts"
                    ));
                }
                return listener;
            }
            Err(e) => {
                if failures == 0 {
                    log.error(format!(
                        "cannot listen on vsock port {port}: {e} (no virtio-vsock device?); retrying"
                    ));
                }
                failures += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BIND_RETRY_MAX);
            }
        }
    }
}

/// The one console line a boot prints; hosts and benchmarks look for it.
fn announce(log: &AgentLog, what: &str, init_start: Stamp, listening: Stamp) {
    log.notice(format!(
        "agent listening on {what} (init +{:.3} ms)",
        listening.ms_since(&init_start)
    ));
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Reports a fatal error; the guest's init then powers the guest off (the
/// VMM sees it exit), anything else exits 1.
fn fatal(guest: bool, err: impl Display) -> ! {
    let _ = writeln!(std::io::stderr(), "vpod-init: fatal: {err}");
    if guest {
        power::go_down(ShutdownKind::Poweroff)
    }
    std::process::exit(1)
}
