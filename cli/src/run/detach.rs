//! `vpod run -d`: the pod's work moves to a detached supervisor (`vpod __supervise <record>`,
//! its own session, its log in the record); this side waits for its word ("started") and prints
//! the pod id, or explains why it did not start.

use std::path::Path;

use crate::record::Record;

/// Starts `vpod __supervise <record>` detached and waits for its word.
pub async fn detach(rec: Record, root: &Path, run_dir: &Path) -> Result<u8, String> {
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
}
