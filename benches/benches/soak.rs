//! `make soak`: kill -9 at a random moment, then count what is left.
//!
//! Each cycle starts one pod and kills the process that owns its microVM at a random moment of
//! its life (while it boots, while its container starts, or while it runs):
//! - even cycles: a one-container CRI pod through containerd's CRI plugin (runtime handler
//!   `vpod`); the shim is killed, then the pod is stopped and removed as kubelet would;
//! - odd cycles: `vpod run -d`; its supervisor (`vpod __supervise`) is killed, then `vpod ps -a`
//!   runs (what a user would type next) and nothing else: no `vpod rm`.
//!
//! After every cycle, and once more at the end, it counts leftovers against a baseline taken
//! before the first cycle: processes (shims, supervisors), taps, mounts, network namespaces,
//! state dirs, and disk images. Not in CI (50 cycles take a while in the test bed); exits 1 when
//! anything is left. `SOAK_CYCLES` (default 50), `SOAK_SEED` (default: the clock; printed).
//! JSON in `target/bench/soak.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_benches::{out_dir, workspace};
use vpod_test_support::containerd::{Containerd, CRI_NAMESPACE, VPOD};
use vpod_test_support::cri::{self, Cri};

const IMAGE: &str = "docker.io/library/vpod-soak:1";
/// The latest moment of a kill, after the pod's start was asked for.
const MAX_KILL_MS: u64 = 6000;
/// How long cleanup may take after a kill before what is left counts.
const SETTLE: Duration = Duration::from_secs(30);

/// xorshift64*: enough randomness for kill times, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// What a host holds of pods: counted before and after.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Census {
    processes: Vec<String>,
    taps: Vec<String>,
    mounts: Vec<String>,
    netns: Vec<String>,
    state_dirs: Vec<String>,
    disk_images: Vec<String>,
}

impl Census {
    /// What `self` holds that `base` did not.
    fn minus(&self, base: &Census) -> Census {
        let d = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        Census {
            processes: d(&self.processes, &base.processes),
            taps: d(&self.taps, &base.taps),
            mounts: d(&self.mounts, &base.mounts),
            netns: d(&self.netns, &base.netns),
            state_dirs: d(&self.state_dirs, &base.state_dirs),
            disk_images: d(&self.disk_images, &base.disk_images),
        }
    }

    fn total(&self) -> usize {
        self.processes.len()
            + self.taps.len()
            + self.mounts.len()
            + self.netns.len()
            + self.state_dirs.len()
            + self.disk_images.len()
    }
}

/// Where this run's pods keep their state.
struct Roots {
    /// Dirs whose entries are one pod each (shim state dir, `vpod` pod records).
    pod_dirs: Vec<PathBuf>,
    /// Trees searched for disk images (`*.img`, `*.ext4`), caches excluded.
    disk_trees: Vec<PathBuf>,
    /// Strings that mark a process or mount as this run's.
    marks: Vec<String>,
}

fn census(r: &Roots) -> Census {
    let mut c = Census::default();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ours = cmd.contains("containerd-shim-vpod") || cmd.contains("__supervise");
        if ours && r.marks.iter().any(|m| cmd.contains(m)) {
            c.processes.push(cmd.trim().to_owned());
        }
    }
    let netns = Command::new("ip").args(["netns", "list"]).output();
    for line in netns
        .map(|o| o.stdout)
        .unwrap_or_default()
        .split(|b| *b == b'\n')
    {
        let line = String::from_utf8_lossy(line);
        if let Some(name) = line.split_whitespace().next() {
            c.netns.push(name.to_owned());
        }
    }
    let mut taps = |prefix: &[&str], ns: &str| {
        let o = Command::new("ip")
            .args(prefix)
            .args(["-o", "link", "show", "type", "tun"])
            .output();
        for line in o
            .map(|o| o.stdout)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
        {
            let line = String::from_utf8_lossy(line);
            if let Some(name) = line.split(": ").nth(1) {
                c.taps.push(format!("{ns}/{name}"));
            }
        }
    };
    taps(&[], "host");
    for ns in c.netns.clone() {
        taps(&["-n", &ns], &ns);
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mounts.lines() {
        let target = m.split(' ').nth(1).unwrap_or("");
        if r.pod_dirs
            .iter()
            .any(|d| target.starts_with(&*d.to_string_lossy()))
        {
            c.mounts.push(target.to_owned());
        }
    }
    for d in &r.pod_dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            c.state_dirs.push(e.path().display().to_string());
        }
    }
    for t in &r.disk_trees {
        disks(t, 0, &mut c.disk_images);
    }
    c
}

fn disks(dir: &Path, depth: u32, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && !name.contains("cache") && name != "images" && name != "root" {
            disks(&p, depth + 1, out);
        } else if ft.is_file() && (name.ends_with(".img") || name.ends_with(".ext4")) {
            out.push(p.display().to_string());
        }
    }
}

fn pids_with(marks: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if marks.iter().all(|m| cmd.contains(m)) {
            out.push(pid);
        }
    }
    out
}

fn kill9(pids: &[i32]) -> usize {
    // SAFETY: kill(2) with plain pids found above; a pid that went meanwhile gives ESRCH.
    pids.iter()
        .filter(|p| unsafe { libc::kill(**p, libc::SIGKILL) } == 0)
        .count()
}

/// Waits until `f` says nothing is left, at most `limit`; returns what is left then.
fn settle(limit: Duration, f: impl Fn() -> Census) -> Census {
    let t0 = Instant::now();
    loop {
        let c = f();
        if c.total() == 0 || t0.elapsed() > limit {
            return c;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cycle {
    path: String,
    kill_after_ms: u64,
    /// Processes the kill hit (0: the pod's owner was not up yet, or already gone).
    killed: usize,
    left: Census,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inner {
    seed: u64,
    cycles: Vec<Cycle>,
    end: Census,
    errors: Vec<String>,
}

async fn cri_cycle(c: &Containerd, client: &mut Cri, i: usize, kill_ms: u64) -> (usize, String) {
    let uid = format!("5a0c0000-0000-4000-8000-{i:012}");
    let pod = cri::pod_config(&format!("soak-{i}"), &uid, &c.dir.join("pod-logs"));
    let _ = std::fs::create_dir_all(Path::new(&pod.log_directory).join("app"));
    let container = cri::container_config("app", IMAGE, &["sh", "-c", "exec sleep 100000"]);
    let sock = c.sock().to_string_lossy().into_owned();
    // At `kill_ms`, or as soon as the shim exists if it comes later (within a minute).
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        let t0 = Instant::now();
        loop {
            let n = kill9(&pids_with(&["containerd-shim-vpod", &sock]));
            if n > 0 || t0.elapsed() > Duration::from_secs(60) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut err = String::new();
    match client.run_pod(&pod, VPOD).await {
        Ok(pod_id) => {
            if let Err(e) = client.create_and_start(&pod_id, &pod, &container).await {
                err = format!("start: {e}");
            }
        }
        Err(e) => err = format!("RunPodSandbox: {e}"),
    }
    let killed = killer.await.unwrap_or(0);
    // kubelet's part: stop and remove whatever pods are there.
    let pods = client
        .runtime
        .list_pod_sandbox(cri::v1::ListPodSandboxRequest::default())
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    for p in pods {
        if let Err(e) = client.stop_and_remove_pod(&p.id).await {
            err.push_str(&format!("; stop/remove {}: {e}", p.id));
        }
    }
    (killed, err)
}

fn vpod(root: &Path, run_dir: &Path) -> Command {
    let ws = workspace();
    let mut cmd = Command::new(ws.join("target/release/vpod"));
    cmd.arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(run_dir)
        .env("VPOD_KERNEL", vpod_test_support::guest_file("vmlinux"))
        .env(
            "VPOD_INITRD",
            vpod_test_support::guest_file("initramfs.cpio"),
        )
        .stdin(Stdio::null());
    cmd
}

fn run_cycle(root: &Path, run_dir: &Path, kill_ms: u64) -> (usize, String) {
    let mut child = match vpod(root, run_dir)
        .args(["run", "-d", "soak:busybox", "--", "sleep", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (0, format!("spawn vpod run: {e}")),
    };
    // Kill at `kill_ms`, or as soon as the supervisor exists if it comes later (the kill must
    // hit the pod's owner, or the pod simply runs on).
    let t0 = Instant::now();
    let killed = loop {
        if t0.elapsed() >= Duration::from_millis(kill_ms) {
            let n = kill9(&pids_with(&["__supervise", &run_dir.to_string_lossy()]));
            let gone = matches!(child.try_wait(), Ok(Some(_)));
            if n > 0 || gone || t0.elapsed() > Duration::from_secs(120) {
                break n;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let t0 = Instant::now();
    let mut err = String::new();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() > Duration::from_secs(120) => {
                err = "vpod run -d still running 120 s after its supervisor was killed".into();
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                err = e.to_string();
                break;
            }
        }
    }
    // What a user types next; no `vpod rm`.
    let _ = vpod(root, run_dir)
        .args(["ps", "-a"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    (killed, err)
}

fn inner(out: &Path) {
    let cycles: usize = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let mut rng = Rng(seed);
    let ws = workspace();
    let shim = ws.join("target/release/containerd-shim-vpod-v2");
    let c = Containerd::start("soak", &shim, true);
    c.import_busybox(
        CRI_NAMESPACE,
        IMAGE,
        Vec::new(),
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let dir = std::env::temp_dir().join(format!("vpod-soak-{}", std::process::id()));
    let (root, run_dir) = (dir.join("root"), dir.join("run"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let layout = dir.join("layout");
    vpod_test_support::layout(
        &layout,
        &[vpod_test_support::busybox_layer(Vec::new())],
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let st = vpod(&root, &run_dir)
        .args(["image", "import"])
        .arg(&layout)
        .args(["--name", "soak:busybox"])
        .status()
        .expect("vpod image import");
    assert!(st.success(), "vpod image import");
    let roots = Roots {
        pod_dirs: vec![c.shim_state(), run_dir.join("pods")],
        disk_trees: vec![c.dir.clone(), dir.clone(), PathBuf::from("/var/lib/vpod")],
        marks: vec![
            c.sock().to_string_lossy().into_owned(),
            run_dir.to_string_lossy().into_owned(),
        ],
    };
    let base = census(&roots);
    let mut r = Inner {
        seed,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt
        .block_on(async {
            let mut client = Cri::connect(&c.sock()).await?;
            for image in [IMAGE, vpod_test_support::containerd::PAUSE_IMAGE] {
                let _ = client.wait_image(image, Duration::from_secs(60)).await;
            }
            Ok::<_, tonic::transport::Error>(client)
        })
        .expect("CRI connect");
    for i in 0..cycles {
        let kill_ms = rng.below(MAX_KILL_MS);
        let (path, (killed, err)) = if i % 2 == 0 {
            (
                "containerd",
                rt.block_on(cri_cycle(&c, &mut client, i, kill_ms)),
            )
        } else {
            ("vpod run -d", run_cycle(&root, &run_dir, kill_ms))
        };
        if !err.is_empty() {
            eprintln!("soak {i} ({path}, kill at {kill_ms} ms): {err}");
        }
        let left = settle(SETTLE, || census(&roots).minus(&base));
        eprintln!(
            "soak {i}: {path}, kill at {kill_ms} ms, {killed} killed, {} left",
            left.total()
        );
        if left.total() > 0 {
            r.errors.push(format!("cycle {i} ({path}): left {left:?}"));
        }
        r.cycles.push(Cycle {
            path: path.into(),
            kill_after_ms: kill_ms,
            killed,
            left,
        });
    }
    r.end = census(&roots).minus(&base);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::write(out, serde_json::to_vec(&r).unwrap()).unwrap();
}

fn main() {
    if let Some(out) = vpod_benches::inner_arg() {
        inner(&out);
        return;
    }
    for p in ["containerd-shim-vpod-v2", "vpod"] {
        if !workspace().join("target/release").join(p).exists() {
            eprintln!("soak: target/release/{p} is missing: run `make build`");
            std::process::exit(1);
        }
    }
    let (where_, r): (_, Inner) = vpod_benches::run_inner_as("soak", &workspace());
    let count = |f: fn(&Census) -> usize| r.cycles.iter().map(|c| f(&c.left)).sum::<usize>();
    println!(
        "\nkill -9 soak: {} cycles on {where_}, seed {} (SOAK_SEED to repeat)",
        r.cycles.len(),
        r.seed
    );
    let hit = r.cycles.iter().filter(|c| c.killed > 0).count();
    println!("cycles whose kill hit a live owner: {hit}");
    println!("{:<14} {:>12} {:>10}", "leftover", "after cycles", "at end");
    type Count = fn(&Census) -> usize;
    let rows: [(&str, Count); 6] = [
        ("processes", |c| c.processes.len()),
        ("taps", |c| c.taps.len()),
        ("mounts", |c| c.mounts.len()),
        ("netns", |c| c.netns.len()),
        ("state dirs", |c| c.state_dirs.len()),
        ("disk images", |c| c.disk_images.len()),
    ];
    for (name, f) in rows {
        println!("{name:<14} {:>12} {:>10}", count(f), f(&r.end));
    }
    for e in &r.errors {
        println!("left: {e}");
    }
    let path = out_dir().join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    println!("wrote {}", path.display());
    if r.end.total() > 0 || !r.errors.is_empty() {
        std::process::exit(1);
    }
}
