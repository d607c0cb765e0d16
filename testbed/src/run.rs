//! Boots L1, runs one command in it, streams its output back, and cleans up.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Error;
use crate::{job, l1};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// L1's vCPUs.
    pub smp: u32,
    /// L1's memory in MiB.
    pub mem_mib: u32,
    /// Whole run, boot included.
    pub timeout: Duration,
    /// Until L1's init speaks; a boot that hangs this long is retried once.
    pub boot_timeout: Duration,
    /// A running L1 whose console heartbeat (every 30 s) stops this long is frozen: it is killed
    /// and the command run again, once.
    pub stall_timeout: Duration,
    /// Host dirs L1 sees read-write at the same path (the working dir is added when none is given).
    pub shares: Vec<PathBuf>,
    /// Keep the run dir (console log, job script) even on success.
    pub keep: bool,
    /// Where run dirs go.
    pub runs_dir: PathBuf,
    /// The command's working dir (a host path L1 sees).
    pub cwd: PathBuf,
    /// The command and its arguments.
    pub argv: Vec<OsString>,
    /// The command's environment.
    pub env: Vec<(OsString, OsString)>,
}

impl RunOptions {
    /// Defaults for `argv` run from the current dir with the current environment.
    pub fn new(argv: Vec<OsString>) -> std::io::Result<Self> {
        let runs_dir = std::env::var_os("VPOD_TESTBED_RUNS")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("vpod-testbed"));
        Ok(RunOptions {
            // One vCPU: with two, a nested guest's VMM once waited forever on an IPI to the other
            // L1 CPU while it sat in the nested guest (an L1 soft lockup under TCG's SVM).
            smp: 1,
            mem_mib: 3072,
            timeout: Duration::from_secs(1800),
            boot_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(240),
            shares: Vec::new(),
            keep: false,
            runs_dir,
            cwd: std::env::current_dir()?,
            argv,
            env: std::env::vars_os().collect(),
        })
    }
}

/// Seconds since L1's kernel started, as its init reported them, plus the host's wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// L1 init started (kernel boot done).
    pub init_s: Option<f64>,
    /// Host root and shares mounted.
    pub root_s: Option<f64>,
    /// kvm_amd loaded, /dev/kvm there: the command starts.
    pub kvm_s: Option<f64>,
    /// The command ended.
    pub exit_s: Option<f64>,
    /// Host wall time from spawning QEMU (last attempt) to its exit.
    pub wall_s: f64,
    /// Boots tried (a hung boot is retried once).
    pub attempts: u32,
}

/// A finished run: the command's exit status (as `sh` reports it: 128+N for a signal).
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status.
    pub status: i32,
    /// When L1 reached each stage.
    pub timings: Timings,
    /// The run's dir (console log, job script), removed unless kept.
    pub run_dir: PathBuf,
}

/// Set by the CLI's SIGINT/SIGTERM handler; the watch loop then kills L1.
pub static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs `opts.argv` in a fresh L1 and returns its exit status. Output is copied to this process's
/// stdout and stderr while it runs.
pub fn run(opts: &RunOptions) -> Result<Outcome, Error> {
    if opts.argv.is_empty() {
        return Err(Error::Setup("no command given".into()));
    }
    let boot = l1::ensure()?;
    let mut shares = if opts.shares.is_empty() {
        vec![opts.cwd.clone()]
    } else {
        opts.shares.clone()
    };
    for s in shares.iter_mut() {
        *s = fs::canonicalize(&*s)
            .map_err(|e| Error::Setup(format!("share {}: {e}", s.display())))?;
        let p = s.to_string_lossy();
        if p == "/" || p.contains([',', ' ', '\t', '\n']) {
            return Err(Error::Setup(format!(
                "share {p}: must not be / nor hold commas or blanks"
            )));
        }
    }

    fs::create_dir_all(&opts.runs_dir).map_err(io_err(&opts.runs_dir))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let run_dir = opts
        .runs_dir
        .join(format!("{stamp}-{}", std::process::id()));
    fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    let job_path = run_dir.join("job.sh");
    fs::write(&job_path, job::render(&opts.cwd, &opts.env, &opts.argv))
        .map_err(io_err(&job_path))?;

    let deadline = Instant::now() + opts.timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt(opts, &boot, &shares, &run_dir, deadline, attempts) {
            Err(Error::NoBoot { .. }) if attempts < 2 && Instant::now() < deadline => {
                eprintln!(
                    "testbed: L1 did not boot within {:?}; retrying once",
                    opts.boot_timeout
                );
                continue;
            }
            Err(Error::Stalled { secs, log, .. }) if attempts < 2 && Instant::now() < deadline => {
                eprintln!(
                    "testbed: L1 froze (no console heartbeat for {secs} s; console: {log}); \
                     running the command again"
                );
                keep_console(&run_dir, attempts);
                continue;
            }
            Err(e) => return Err(e),
            Ok(mut out) => {
                out.timings.attempts = attempts;
                if !opts.keep {
                    let _ = fs::remove_dir_all(&run_dir);
                }
                return Ok(out);
            }
        }
    }
}

/// Keeps a frozen attempt's console beside the next one's (`console.log.N`).
fn keep_console(run_dir: &Path, attempt: u32) {
    let _ = fs::rename(
        run_dir.join("console.log"),
        run_dir.join(format!("console.log.{attempt}")),
    );
}

/// Tails a file that another process appends to.
struct Tail {
    path: PathBuf,
    pos: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { path, pos: 0 }
    }

    /// New bytes since the last call (none if the file isn't there yet).
    fn read_new(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.pos)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                self.pos += buf.len() as u64;
            }
        }
        buf
    }
}

/// What L1's console said so far.
#[derive(Default)]
struct Console {
    text: String,
    timings: Timings,
    error: Option<String>,
}

impl Console {
    fn feed(&mut self, bytes: &[u8]) {
        self.text.push_str(&String::from_utf8_lossy(bytes));
        // Re-parse complete lines only; the log is small.
        let mut t = Timings::default();
        let mut error = None;
        for line in self.text.lines() {
            if let Some(rest) = line.split("TESTBED_STAGE ").nth(1) {
                let mut it = rest.split_whitespace();
                let (name, up) = (
                    it.next().unwrap_or(""),
                    it.next().and_then(|u| u.parse().ok()),
                );
                match name {
                    "init" => t.init_s = up,
                    "root" => t.root_s = up,
                    "kvm" => t.kvm_s = up,
                    n if n.starts_with("exit=") => t.exit_s = up,
                    _ => {}
                }
            } else if let Some(rest) = line.split("TESTBED_ERROR ").nth(1) {
                error.get_or_insert_with(|| rest.trim().to_owned());
            }
        }
        self.timings = t;
        self.error = error;
    }
}

fn kill(child: &mut Child) {
    // QEMU runs in its own process group; take the whole group down.
    // SAFETY: kill(2) on a pid we spawned; no memory is touched.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

fn qemu_command(
    opts: &RunOptions,
    boot: &l1::BootFiles,
    shares: &[PathBuf],
    run_dir: &Path,
) -> Command {
    let mut c = Command::new(
        std::env::var_os("VPOD_TESTBED_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()),
    );
    let shares_arg = shares
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(",");
    c.args(["-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm"])
        .args([
            "-smp",
            &opts.smp.to_string(),
            "-m",
            &opts.mem_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", run_dir.join("console.log").display()))
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initramfs)
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=res,security_model=none",
            run_dir.display()
        ));
    for (i, s) in shares.iter().enumerate() {
        c.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=s{i},security_model=none,multidevs=remap",
            s.display()
        ));
    }
    c.arg("-append").arg(format!(
        "console=ttyS0 reboot=k panic=-1 quiet tb_shares={shares_arg}"
    ));
    c
}

fn attempt(
    opts: &RunOptions,
    boot: &l1::BootFiles,
    shares: &[PathBuf],
    run_dir: &Path,
    deadline: Instant,
    attempt: u32,
) -> Result<Outcome, Error> {
    let console_path = run_dir.join("console.log");
    let log = console_path.display().to_string();
    for f in ["console.log", "stdout", "stderr", "exit"] {
        let _ = fs::remove_file(run_dir.join(f));
    }
    let qemu_log = run_dir.join("qemu.log");
    let qlog = File::create(&qemu_log).map_err(io_err(&qemu_log))?;
    let qlog2 = qlog.try_clone().map_err(io_err(&qemu_log))?;
    let mut cmd = qemu_command(opts, boot, shares, run_dir);
    cmd.stdin(Stdio::null()).stdout(qlog).stderr(qlog2);
    // SAFETY: only async-signal-safe calls between fork and exec: a new process group (so a kill takes
    // all of QEMU), and SIGKILL if the test bed dies, so no QEMU ever outlives it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(Error::Spawn)?;

    let mut console = Console::default();
    let mut con_tail = Tail::new(console_path.clone());
    let mut out_tail = Tail::new(run_dir.join("stdout"));
    let mut err_tail = Tail::new(run_dir.join("stderr"));
    let pump = |out: &mut Tail, err: &mut Tail| {
        let (o, e) = (out.read_new(), err.read_new());
        if !o.is_empty() {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(&o);
            let _ = so.flush();
        }
        if !e.is_empty() {
            let _ = std::io::stderr().write_all(&e);
        }
    };

    let mut heard = Instant::now();
    let exited = loop {
        pump(&mut out_tail, &mut err_tail);
        let said = con_tail.read_new();
        if !said.is_empty() {
            heard = Instant::now();
        }
        console.feed(&said);
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if INTERRUPTED.load(Ordering::SeqCst) != 0 {
            kill(&mut child);
            pump(&mut out_tail, &mut err_tail);
            return Err(Error::Interrupted { log });
        }
        let now = Instant::now();
        if console.timings.init_s.is_none() && now.duration_since(start) > opts.boot_timeout {
            kill(&mut child);
            return Err(Error::NoBoot {
                secs: opts.boot_timeout.as_secs(),
                attempts: attempt,
                log,
            });
        }
        if console.timings.kvm_s.is_some()
            && console.timings.exit_s.is_none()
            && now.duration_since(heard) > opts.stall_timeout
        {
            kill(&mut child);
            pump(&mut out_tail, &mut err_tail);
            return Err(Error::Stalled {
                secs: opts.stall_timeout.as_secs(),
                attempts: attempt,
                log,
            });
        }
        if now > deadline {
            kill(&mut child);
            pump(&mut out_tail, &mut err_tail);
            return Err(Error::Timeout {
                secs: opts.timeout.as_secs(),
                log,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall_s = start.elapsed().as_secs_f64();
    pump(&mut out_tail, &mut err_tail);
    console.feed(&con_tail.read_new());

    if let Some(what) = console.error.take() {
        return Err(Error::L1 { what, log });
    }
    let exit_file = run_dir.join("exit");
    match fs::read_to_string(&exit_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        Some(status) => {
            let timings = Timings {
                wall_s,
                ..console.timings
            };
            Ok(Outcome {
                status,
                timings,
                run_dir: run_dir.to_owned(),
            })
        }
        None if console.timings.init_s.is_none() => Err(Error::NoBoot {
            secs: wall_s as u64,
            attempts: attempt,
            log,
        }),
        None => {
            let qemu = fs::read_to_string(&qemu_log).unwrap_or_default();
            let last = qemu
                .lines()
                .rfind(|l| !l.contains("TCG doesn't support"))
                .unwrap_or("")
                .to_owned();
            Err(Error::L1 {
                what: format!(
                    "L1 ended ({exited}) without reporting the command's exit status {last}"
                ),
                log,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_parsing_finds_stages_and_errors() {
        let mut c = Console::default();
        c.feed(b"[    1.0] booting\nTESTBED_STAGE init 3.57\nTESTBED_STA");
        assert_eq!(c.timings.init_s, Some(3.57));
        c.feed(
            b"GE root 5.11\nTESTBED_STAGE kvm 6.78\nTESTBED_ERROR kvm_amd: modprobe failed: x\n",
        );
        assert_eq!(c.timings.root_s, Some(5.11));
        assert_eq!(c.timings.kvm_s, Some(6.78));
        assert_eq!(c.error.as_deref(), Some("kvm_amd: modprobe failed: x"));
        c.feed(b"TESTBED_STAGE exit=7 7.15\n");
        assert_eq!(c.timings.exit_s, Some(7.15));
    }
}
