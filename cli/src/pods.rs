//! `vpod ps`, `exec`, `logs`, `stop`, `rm`: detached pods, through their
//! records and, while they run, their agents (the vsock socket of the VM).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use vpod_agent_api::pb::{
    exec_input, exec_output, ExecInput, ExecResize, ExecStart, Process, StopContainerRequest,
};
use vpod_agent_api::AGENT_VSOCK_PORT;

use crate::record::{Record, Supervisor};
use crate::run::{unix_now, CONTAINER_ID, DEFAULT_STOP_GRACE};
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
    let mut agent = vpod_agent_api::connect(&rec.vsock(), AGENT_VSOCK_PORT)
        .await
        .map_err(|e| format!("pod {id}: reach its agent: {e}"))?;
    // StopContainer lasts the grace period: its deadline is that plus a call's.
    let deadline = grace + vpod_agent_api::call_timeout();
    let stop = agent.stop_container(StopContainerRequest {
        id: CONTAINER_ID.into(),
        grace_period_ms: grace.as_millis().min(u32::MAX as u128) as u32,
        signal: 0,
    });
    tokio::time::timeout(deadline, stop)
        .await
        .map_err(|_| format!("pod {id}: stop: the agent did not answer within {deadline:?}"))?
        .map_err(|s| format!("pod {id}: stop: {}", s.message()))?;
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
    let mut agent = vpod_agent_api::connect(&rec.vsock(), AGENT_VSOCK_PORT)
        .await
        .map_err(|e| format!("pod {id}: reach its agent: {e}"))?;
    let (rows, cols) = if tty {
        term::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let (tx, rx) = mpsc::channel::<ExecInput>(16);
    let start = ExecInput {
        input: Some(exec_input::Input::Start(ExecStart {
            container_id: CONTAINER_ID.into(),
            process: Some(Process {
                args: command,
                tty,
                stdin: interactive,
                tty_rows: rows,
                tty_cols: cols,
                ..Default::default()
            }),
        })),
    };
    tx.send(start).await.map_err(|e| e.to_string())?;
    let mut out = agent
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("pod {id}: exec: {}", s.message()))?
        .into_inner();
    let _raw = tty.then(term::RawMode::enter);
    if interactive {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut stdin = std::io::stdin().lock();
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(ExecInput {
                            input: Some(exec_input::Input::CloseStdin(true)),
                        });
                        return;
                    }
                    Ok(n) => {
                        let msg = ExecInput {
                            input: Some(exec_input::Input::Stdin(buf[..n].to_vec())),
                        };
                        if tx.blocking_send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = term::size() {
                    let msg = ExecInput {
                        input: Some(exec_input::Input::Resize(ExecResize { rows, cols })),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Keep the input stream open while the process runs.
    let _keep = tx;
    let mut code = 255u8;
    while let Some(msg) = out
        .message()
        .await
        .map_err(|s| format!("pod {id}: exec: {}", s.message()))?
    {
        match msg.output {
            Some(exec_output::Output::Stdout(b)) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&b);
                let _ = o.flush();
            }
            Some(exec_output::Output::Stderr(b)) => {
                let _ = std::io::stderr().lock().write_all(&b);
            }
            Some(exec_output::Output::Exit(e)) => {
                code = e.exit_code.clamp(0, 255) as u8;
                break;
            }
            None => {}
        }
    }
    Ok(code)
}
