//! `vpod ps`, `exec`, `logs`, `stop`, `rm`: detached pods, through their
//! records and, while they run, their agents (the vsock socket of the VM).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use vpod_agent_api::pb::Process;
use vpod_sandbox::PodAgent;

use crate::record::{unix_now, Record, Supervisor};
use crate::run::{CONTAINER_ID, DEFAULT_STOP_GRACE};
use crate::stdio::{forward_stdin, Ours, Sink};
use crate::term;

/// How long `stop`/`rm -f` wait for a supervisor to finish after the
/// container is gone (VM shutdown).
const SUPERVISOR_EXIT_WAIT: Duration = Duration::from_secs(30);

fn state(rec: &Record) -> String {
    match (rec.status(), rec.supervisor()) {
        (Some(s), _) => format!("Exited ({}) {}", s.exit_code, s.reason),
        (None, Some(_)) => "Running".into(),
        (None, None) => "Dead (supervisor gone)".into(),
    }
}

pub fn ps(run_dir: &Path, all: bool) -> Result<u8, String> {
    println!(
        "{:<14} {:<28} {:<28} {:<10} COMMAND",
        "POD ID", "IMAGE", "STATUS", "CREATED"
    );
    for rec in Record::list(run_dir) {
        let st = state(&rec);
        if !all && !st.starts_with("Running") {
            continue;
        }
        let args = rec.args().ok();
        let image = args.as_ref().map(|a| a.image.clone()).unwrap_or_default();
        let cmd = args.map(|a| a.command.join(" ")).unwrap_or_default();
        let age = unix_now().saturating_sub(rec.created());
        println!(
            "{:<14} {:<28} {:<28} {:<10} {}",
            rec.id(),
            image,
            st,
            format!("{age}s ago"),
            cmd
        );
    }
    Ok(0)
}

fn running(run_dir: &Path, id: &str) -> Result<(Record, Supervisor), String> {
    let rec = Record::find(run_dir, id).map_err(|e| e.to_string())?;
    match rec.supervisor() {
        Some(sup) if rec.status().is_none() => Ok((rec, sup)),
        _ => Err(format!("pod {id} is not running ({})", state(&rec))),
    }
}

pub async fn logs(run_dir: &Path, id: &str, follow: bool) -> Result<u8, String> {
    let rec = Record::find(run_dir, id).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    // The older generation first, when the cap rotated one away.
    if let Ok(mut old) = std::fs::File::open(crate::logfile::CappedLog::rotated(&rec.log_path())) {
        std::io::copy(&mut old, &mut out).map_err(|e| e.to_string())?;
    }
    let mut f = std::fs::File::open(rec.log_path())
        .map_err(|e| format!("open {}: {e}", rec.log_path().display()))?;
    loop {
        std::io::copy(&mut f, &mut out).map_err(|e| e.to_string())?;
        let _ = out.flush();
        if !follow || rec.supervisor().is_none() {
            // One more copy catches what came before the supervisor ended.
            std::io::copy(&mut f, &mut out).map_err(|e| e.to_string())?;
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn stop(run_dir: &Path, id: &str, grace: Duration) -> Result<u8, String> {
    let Ok((rec, sup)) = running(run_dir, id) else {
        // Already stopped: stop is idempotent.
        Record::find(run_dir, id).map_err(|e| e.to_string())?;
        println!("{id}");
        return Ok(0);
    };
    let agent = PodAgent::connect(id, &rec.vsock())
        .await
        .map_err(|e| e.to_string())?;
    agent
        .stop_container(CONTAINER_ID, grace)
        .await
        .map_err(|e| e.to_string())?;
    sup.wait_gone(SUPERVISOR_EXIT_WAIT).await;
    println!("{id}");
    Ok(0)
}

pub async fn rm(run_dir: &Path, id: &str, force: bool) -> Result<u8, String> {
    let rec = Record::find(run_dir, id).map_err(|e| e.to_string())?;
    // Signals go through the supervisor's pidfd: to that process or none.
    if let Some(sup) = rec.supervisor() {
        if !force {
            return Err(format!(
                "pod {id} is running: `vpod stop {id}` first, or `vpod rm -f {id}`"
            ));
        }
        // SIGTERM: the supervisor stops the container, then the VM.
        sup.signal(Signal::SIGTERM);
        if !sup
            .wait_gone(DEFAULT_STOP_GRACE + SUPERVISOR_EXIT_WAIT)
            .await
        {
            // The VM lives in the supervisor: killing it frees everything.
            sup.signal(Signal::SIGKILL);
            sup.wait_gone(SUPERVISOR_EXIT_WAIT).await;
        }
    }
    rec.remove();
    println!("{id}");
    Ok(0)
}

pub async fn exec(
    run_dir: &Path,
    id: &str,
    tty: bool,
    interactive: bool,
    command: Vec<String>,
) -> Result<u8, String> {
    if command.is_empty() {
        return Err("exec: no command".into());
    }
    let (rec, _) = running(run_dir, id)?;
    let agent = PodAgent::connect(id, &rec.vsock())
        .await
        .map_err(|e| e.to_string())?;
    let (rows, cols) = if tty {
        term::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let process = Process {
        args: command,
        tty,
        stdin: interactive,
        tty_rows: rows,
        tty_cols: cols,
        ..Default::default()
    };
    let exec = agent
        .exec(CONTAINER_ID, process)
        .await
        .map_err(|e| e.to_string())?;
    let _raw = tty.then(term::RawMode::enter);
    if interactive {
        forward_stdin(exec.stdin());
    }
    if tty {
        let control = exec.control();
        tokio::spawn(async move {
            term::forward_resizes(|rows, cols| {
                let control = control.clone();
                async move { control.resize(rows, cols).await }
            })
            .await
        });
    }
    let stdout = Sink::new(None, Some(Ours::Stdout));
    let stderr = Sink::new(None, Some(Ours::Stderr));
    let exit = exec
        .copy_to(Some(stdout), Some(stderr))
        .await
        .map_err(|e| e.to_string())?;
    Ok(exit.map_or(255, |e| e.exit_code.clamp(0, 255) as u8))
}
