//! The container's life in its booted pod: created from its spec (volumes pushed, then watched),
//! its output copied into the record's log (and our terminal), started, fed our stdin and
//! terminal size, stopped on SIGINT/SIGTERM, waited for.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vpod_agent_api::pb::ExitStatus;
use vpod_sandbox::{volumes, Pod};

use super::spec::{Container, CONTAINER_ID, IMAGE_SERIAL};
use crate::logfile::{self, CappedLog};
use crate::record::Record;
use crate::stdio::{forward_stdin, Ours, Sink};
use crate::term;

/// How long SIGTERM/`vpod stop` lets the container wind down.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the container's output goes besides the record's log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// Also to our stdout/stderr.
    Terminal,
    /// Only to the record's log; say "started" on stdout once running.
    Supervisor,
}

/// Runs the container to its end; its volumes are kept current meanwhile.
pub async fn run_container(
    pod: &Arc<Pod>,
    c: &Container,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let watched = pod
        .create_container_with(
            CONTAINER_ID,
            &c.spec,
            IMAGE_SERIAL,
            &c.classifier,
            c.opts.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let watcher = tokio::spawn(volumes::watch(
        pod.clone(),
        watched,
        volumes::DEFAULT_POLL,
        |v, r| match r {
            Ok(gen) => tracing::info!("volume {} updated (generation {gen})", v.name),
            Err(e) => tracing::warn!("volume {} update failed: {e}", v.name),
        },
    ));
    let result = drive(pod, rec, output, interactive, tty).await;
    watcher.abort();
    let _ = watcher.await;
    result
}

/// Attaches, starts and waits for the created container.
async fn drive(
    pod: &Arc<Pod>,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let id = CONTAINER_ID;
    let out = pod.attach(id).await.map_err(|e| e.to_string())?;
    // The guest decides how much it prints: the host file is capped (two generations).
    let log = CappedLog::open(&rec.log_path(), logfile::DEFAULT_MAX_BYTES)
        .map_err(|e| format!("open {}: {e}", rec.log_path().display()))?;
    let log = Arc::new(Mutex::new(log));
    let terminal = output == Output::Terminal;
    let ours = |o| terminal.then_some(o);
    let copier = tokio::spawn(out.copy_to(
        Some(Sink::new(Some(log.clone()), ours(Ours::Stdout))),
        Some(Sink::new(Some(log.clone()), ours(Ours::Stderr))),
    ));
    let _raw = (terminal && tty).then(term::RawMode::enter);
    pod.start_container(id).await.map_err(|e| e.to_string())?;
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
        forward_stdin(pod.stdin(id));
    }
    if tty && terminal {
        let front = pod.containers().clone();
        tokio::spawn(async move {
            term::forward_resizes(|rows, cols| front.resize_tty(id, rows, cols)).await
        });
    }
    let signals = tokio::spawn(stop_on_signals(pod.clone()));
    let status = pod.wait_container(id).await.map_err(|e| e.to_string());
    signals.abort();
    let _ = signals.await;
    // Copied to its end (or its break): what the cap rotated away is known now.
    if copier.await.is_ok() {
        let dropped = log.lock().unwrap_or_else(|p| p.into_inner()).dropped();
        if dropped > 0 {
            tracing::info!("container.log: {dropped} bytes of older output rotated away");
        }
    }
    status
}

/// SIGINT/SIGTERM: stop the container (grace period); a second one kills it.
async fn stop_on_signals(pod: Arc<Pod>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    let p = pod.clone();
    tokio::spawn(async move {
        let _ = p.stop_container(CONTAINER_ID, DEFAULT_STOP_GRACE).await;
    });
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    let _ = pod.kill_container(CONTAINER_ID, libc::SIGKILL, true).await;
}
