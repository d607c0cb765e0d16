//! Issue 12 item 13: the shim's own commands never lose their exit status to
//! containerd-shim's reaper, and the shim leaves no zombie behind.
//!
//! Runs the real containerd-shim bootstrap (`run`, the `delete` action: it
//! installs the same signal handling as a serving shim) with the settings the
//! shim's `main` uses, in a child process of this test. Its `delete_shim` runs
//! many commands from several threads while other children keep exiting, and
//! orphans a grandchild; any ECHILD or a zombie left over fails the run.
//!
//! `harness = false`: the shim bootstrap parses the process's argv as shim flags.

#[path = "../src/reaping.rs"]
mod reaping;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::Shim;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api;

const CHILD_ENV: &str = "VPOD_REAPING_TEST_CHILD";
const THREADS: usize = 4;
const COMMANDS_PER_THREAD: usize = 150;

struct NoTasks;
impl containerd_shim_protos::shim_async::Task for NoTasks {}

struct StressShim;

#[async_trait]
impl Shim for StressShim {
    type T = NoTasks;

    async fn new(_: &str, _: &Flags, _: &mut Config) -> Self {
        StressShim
    }

    async fn start_shim(&mut self, _: StartOpts) -> Result<String, Error> {
        Err(Error::Other("not used".into()))
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        tokio::task::spawn_blocking(stress)
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .map_err(Error::Other)?;
        Ok(api::DeleteResponse::default())
    }

    async fn wait(&mut self) {}

    async fn create_task_service(&self, _: RemotePublisher) -> NoTasks {
        NoTasks
    }
}

/// Our children that are zombies (exited, not waited for).
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1).and_then(|p| p.parse().ok()) == Some(me) {
            out.push(e.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    out
}

fn stress() -> Result<(), String> {
    // Children that exit while the commands below run, waited for by their
    // own thread (as tokio or a library would).
    let background = std::thread::spawn(|| {
        for _ in 0..100 {
            let mut c = Command::new("sh")
                .args(["-c", "exit 3"])
                .spawn()
                .map_err(|e| format!("spawn sh: {e}"))?;
            let st = c.wait().map_err(|e| format!("wait for sh: {e}"))?;
            if st.code() != Some(3) {
                return Err(format!("sh exited {st:?}, not 3"));
            }
        }
        Ok::<(), String>(())
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..COMMANDS_PER_THREAD {
                    let out = Command::new("true")
                        .stdin(Stdio::null())
                        .output()
                        .map_err(|e| format!("thread {t} command {i}: true: {e}"))?;
                    if !out.status.success() {
                        return Err(format!("thread {t} command {i}: true: {}", out.status));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    let mut errors = Vec::new();
    for w in workers.into_iter().chain([background]) {
        if let Err(e) = w.join().map_err(|_| "a thread panicked".to_string())? {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(format!("{} failed: {}", errors.len(), errors.join("; ")));
    }
    // A grandchild orphaned by one of our commands: it must not end up a
    // zombie of ours that nobody waits for.
    let st = Command::new("sh")
        .args(["-c", "sleep 0.2 &"])
        .status()
        .map_err(|e| format!("sh: {e}"))?;
    if !st.success() {
        return Err(format!("sh: {st}"));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    loop {
        let z = zombie_children();
        if z.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(5) {
            return Err(format!("zombie children left: {z:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(containerd_shim::asynchronous::run::<StressShim>(
            "io.containerd.vpod-reaping-test.v2",
            Some(reaping::shim_config()),
        ));
        std::process::exit(0);
    }
    // Filters from `cargo test -- NAME`: run unless a filter excludes us.
    let name = "shim_commands_keep_their_exit_status_and_leave_no_zombies";
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("test {name} ... filtered out");
        return;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["-namespace", "reaping-test", "-id", "stress", "delete"])
        .env(CHILD_ENV, "1")
        .env("TTRPC_ADDRESS", "/nonexistent/ttrpc.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run the shim bootstrap");
    if !out.status.success() {
        eprintln!(
            "test {name} ... FAILED\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    println!("test {name} ... ok");
}
