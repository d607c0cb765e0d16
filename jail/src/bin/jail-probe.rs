//! `jail-probe`: a test program for tests/jail.rs, not for production. It enters a jail from
//! the JSON spec in its first argument, optionally applies a seccomp list (`--seccomp main`,
//! `event-loop` or `vcpu`; `--seccomp-log` for log mode), prints `ready ...` and then answers
//! commands read from stdin, one a line:
//!
//! - `status`: fields of /proc/self/status (needs `mount_proc`), then `end`
//! - `kill PID`: `kill(PID, 0)`'s result (`kill ok` or `kill errno=N`)
//! - `open PATH r|rw|create`: `open ok` or `open errno=N`
//! - `forbidden`: a syscall no list allows (ptrace); `survived` if it returned
//! - `hostname`: `hostname NAME`
//! - `sigwait`: waits for SIGTERM/SIGINT (blocked since start), prints `signal N` and exits 0
//! - `exit N`: exits with N (EOF: exit 0)

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use vpod_jail::JailSpec;

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: local sigset initialised before use; only this thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn apply_seccomp(kind: &str, log: bool) -> Result<(), String> {
    use vpod_jail::seccomp::{apply, program, Mode, ThreadKind};
    let kind = match kind {
        "main" => ThreadKind::Main,
        "event-loop" => ThreadKind::EventLoop,
        "vcpu" => ThreadKind::Vcpu,
        other => return Err(format!("unknown thread kind {other:?}")),
    };
    let mode = if log { Mode::Log } else { Mode::Enforce };
    let prog = program(kind, mode).map_err(|e| e.to_string())?;
    apply(&prog).map_err(|e| e.to_string())
}

fn root_entries() -> String {
    let mut names: Vec<String> = match std::fs::read_dir("/") {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => return format!("error:{}", e.raw_os_error().unwrap_or(0)),
    };
    names.sort();
    names.join(",")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(json) = args.get(1) else {
        eprintln!("usage: jail-probe SPEC_JSON [--seccomp KIND] [--seccomp-log]");
        return ExitCode::from(2);
    };
    let spec: JailSpec = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jail-probe: spec: {e}");
            return ExitCode::from(2);
        }
    };
    let seccomp = args
        .iter()
        .position(|a| a == "--seccomp")
        .and_then(|i| args.get(i + 1).cloned());
    let seccomp_log = args.iter().any(|a| a == "--seccomp-log");
    let stop_signals = block_stop_signals();

    let started = Instant::now();
    let entered = match vpod_jail::enter(&spec) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("jail-probe: enter: {e}");
            return ExitCode::from(3);
        }
    };
    let enter_us = started.elapsed().as_micros();
    // What the ready line reports is gathered first: the thread lists don't allow these calls.
    // SAFETY: id getters have no arguments.
    let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
    let root = root_entries();
    let mut out = std::io::stdout().lock();
    if let Some(kind) = &seccomp {
        if let Err(e) = apply_seccomp(kind, seccomp_log) {
            eprintln!("jail-probe: seccomp: {e}");
            return ExitCode::from(4);
        }
    }
    let _ = writeln!(
        out,
        "ready pid={pid} uid={uid} gid={gid} enter_us={enter_us} setup_us={} root={}",
        entered.setup.as_micros(),
        root
    );
    let _ = out.flush();

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("status"), _) => {
                match std::fs::read_to_string("/proc/self/status") {
                    Ok(s) => {
                        for l in s.lines() {
                            let _ = writeln!(out, "status {l}");
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "status error {e}");
                    }
                }
                let _ = writeln!(out, "end");
            }
            (Some("kill"), Some(pid)) => {
                let pid: libc::pid_t = pid.parse().unwrap_or(0);
                // SAFETY: signal 0 only checks permission and existence.
                let r = unsafe { libc::kill(pid, 0) };
                let _ = if r == 0 {
                    writeln!(out, "kill ok")
                } else {
                    writeln!(out, "kill errno={}", errno())
                };
            }
            (Some("open"), Some(path)) => {
                let mut o = std::fs::OpenOptions::new();
                match words.next() {
                    Some("rw") => o.read(true).write(true),
                    Some("create") => o.write(true).create_new(true),
                    _ => o.read(true),
                };
                // Closed before answering, so the test sees no extra fd.
                let _ = match o.open(path).map(drop) {
                    Ok(_) => writeln!(out, "open ok"),
                    Err(e) => writeln!(out, "open errno={}", e.raw_os_error().unwrap_or(0)),
                };
            }
            (Some("forbidden"), _) => {
                // SAFETY: PTRACE_TRACEME takes no pointers; under a filter it never returns.
                let r = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
                let _ = writeln!(out, "survived ret={r}");
            }
            (Some("hostname"), _) => {
                let mut buf = [0u8; 65];
                // SAFETY: the buffer is valid for its length.
                unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
                let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
                let _ = writeln!(out, "hostname {}", String::from_utf8_lossy(&buf[..end]));
            }
            (Some("sigwait"), _) => {
                let _ = writeln!(out, "waiting");
                let _ = out.flush();
                let mut sig = 0;
                // SAFETY: an initialised set and a valid out pointer.
                unsafe { libc::sigwait(&stop_signals, &mut sig) };
                let _ = writeln!(out, "signal {sig}");
                let _ = out.flush();
                return ExitCode::SUCCESS;
            }
            (Some("exit"), code) => {
                let _ = out.flush();
                return ExitCode::from(code.and_then(|c| c.parse().ok()).unwrap_or(0));
            }
            _ => {
                let _ = writeln!(out, "unknown {line}");
            }
        }
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}
