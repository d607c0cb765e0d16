//! `make bench-pod`: pod start latency.
//!
//! - `vpod run IMAGE -- echo`: from spawning the command to the container's
//!   first output line on its stdout, and to its exit (everything: image
//!   lookup, ephemeral disk, VM boot, container create/start, shutdown).
//! - The same start driven through the sandbox library in-process, split by
//!   stage (ephemeral disk + slots, VM start, boot to READY, ephemeral mount,
//!   create, start to first output), then a second container in the running
//!   pod (create + start to its first output).
//! - Baseline in the same run: QEMU `-M microvm` booting the same kernel and
//!   initramfs to the agent's READY call (no container at all).
//!
//! `BENCH_RUNS` (default 20) of each, one at a time, on a real KVM (directly
//! or in the test bed's L1). Table on stdout, JSON in `target/bench/pod.json`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::{CreateContainerRequest, Process};
use vpod_benches::{out_dir, qemu_microvm, vsock_ready, workspace, Stats};
use vpod_sandbox::{ImageDisk, Pod, PodConfig};
use vpod_test_support as images;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The pod's VM size for a container without limits (what `vpod run` picks).
fn pod_mem_mib() -> u32 {
    vpod_sandbox::VmSize::for_pod(&[vpod_sandbox::Limits::default()], 1).mem_mib
}

fn need(p: PathBuf, how: &str) -> PathBuf {
    if !p.exists() {
        eprintln!("bench pod: {} is missing: {how}", p.display());
        std::process::exit(1);
    }
    p
}

struct Files {
    vpod: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn files() -> Files {
    let ws = workspace();
    Files {
        vpod: need(
            ws.join("target/release/vpod"),
            "run `cargo build --release -p vpod-cli`",
        ),
        kernel: need(ws.join("target/guest/vmlinux"), "run `make guest`"),
        initrd: need(ws.join("target/guest/initramfs.cpio"), "run `make guest`"),
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct CliRun {
    first_line_ms: f64,
    exit_ms: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LibRun {
    disk_ms: f64,
    vm_start_ms: f64,
    ready_ms: f64,
    ephemeral_mount_ms: f64,
    create_ms: f64,
    start_to_output_ms: f64,
    first_total_ms: f64,
    second_create_ms: f64,
    second_start_to_output_ms: f64,
    second_total_ms: f64,
    shutdown_ms: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inner {
    cli: Vec<CliRun>,
    lib: Vec<LibRun>,
    qemu_ready_ms: Vec<f64>,
    errors: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A store with the busybox image; returns (store root, image disk path).
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let layout = dir.join("layout");
    let layer = images::busybox_layer(Vec::new());
    images::layout(&layout, &[layer], serde_json::json!({"Cmd": ["sh"]}));
    let root = dir.join("root");
    let store = vpod_images::Store::open(&root).expect("store");
    vpod_images::import(&store, &layout, Some("bench:busybox")).expect("import");
    let d = store.resolve("bench:busybox").expect("resolve");
    let disk = store
        .ensure_block_image(&d, vpod_images::FsType::detect())
        .expect("block image")
        .path;
    (root, disk)
}

fn cli_run(f: &Files, root: &Path, run_dir: &Path) -> Result<CliRun, String> {
    let t0 = Instant::now();
    let mut child = Command::new(&f.vpod)
        .arg("--root")
        .arg(root)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["run", "bench:busybox", "--", "echo", "first-line"])
        .env("VPOD_KERNEL", &f.kernel)
        .env("VPOD_INITRD", &f.initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn vpod: {e}"))?;
    let mut first = None;
    let out = child.stdout.take().expect("stdout");
    for line in std::io::BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if first.is_none() && line.contains("first-line") {
            first = Some(t0.elapsed());
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    let exit = t0.elapsed();
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!("vpod run exited {st}: {}", err.trim()));
    }
    let first = first.ok_or("no first line")?;
    Ok(CliRun {
        first_line_ms: ms(first),
        exit_ms: ms(exit),
    })
}

fn echo(id: &str, word: &str) -> CreateContainerRequest {
    CreateContainerRequest {
        id: id.into(),
        image_disk: "img0".into(),
        process: Some(Process {
            args: vec!["echo".into(), word.into()],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// create, attach, start, first output chunk: (create, start-to-output).
async fn container(pod: &Pod, req: CreateContainerRequest) -> Result<(f64, f64), String> {
    let id = req.id.clone();
    let t0 = Instant::now();
    pod.create_container(req).await.map_err(|e| e.to_string())?;
    let created = t0.elapsed();
    let t1 = Instant::now();
    let mut out = pod.attach(&id).await.map_err(|e| e.to_string())?;
    pod.start_container(&id).await.map_err(|e| e.to_string())?;
    out.next()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no output")?;
    let output = t1.elapsed();
    pod.wait_container(&id).await.map_err(|e| e.to_string())?;
    Ok((ms(created), ms(output)))
}

async fn lib_run(f: &Files, disk: &Path, dir: &Path, i: usize) -> Result<LibRun, String> {
    let t0 = Instant::now();
    // Sized as `vpod run` sizes a container without limits: PodConfig's default.
    let pod = Pod::boot(PodConfig {
        ephemeral_bytes: 1 << 30,
        images: vec![ImageDisk {
            serial: "img0".into(),
            path: disk.to_path_buf(),
        }],
        spare_slots: 0,
        boot_timeout: READY_TIMEOUT,
        ..PodConfig::new(
            format!("bench-{i}"),
            dir.join(format!("pod-{i}")),
            &f.kernel,
            &f.initrd,
        )
    })
    .await
    .map_err(|e| e.to_string())?;
    let bt = pod.boot_times;
    let (create_ms, start_to_output_ms) = container(&pod, echo("first", "one")).await?;
    let first_total_ms = ms(t0.elapsed());
    let t1 = Instant::now();
    let (second_create_ms, second_start_to_output_ms) =
        container(&pod, echo("second", "two")).await?;
    let second_total_ms = ms(t1.elapsed());
    let t2 = Instant::now();
    pod.shutdown(Duration::from_secs(30)).await;
    Ok(LibRun {
        disk_ms: ms(bt.disk),
        vm_start_ms: ms(bt.vm_start),
        ready_ms: ms(bt.ready),
        ephemeral_mount_ms: ms(bt.ephemeral_mount),
        create_ms,
        start_to_output_ms,
        first_total_ms,
        second_create_ms,
        second_start_to_output_ms,
        second_total_ms,
        shutdown_ms: ms(t2.elapsed()),
    })
}

async fn qemu_ready(f: &Files, i: usize) -> Result<f64, String> {
    let ready = vsock_ready(READY_TIMEOUT).await?;
    let t0 = Instant::now();
    let mut child = qemu_microvm(&f.kernel, &f.initrd, pod_mem_mib(), 200 + i as u32)
        .spawn()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    let r = ready
        .await
        .map(|_| ms(t0.elapsed()))
        .map_err(|e| e.to_string());
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn inner(out: &Path) {
    let f = files();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("vpod-bench-pod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (root, disk) = image(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut res = Inner::default();
    // One warm-up of each (page cache, first-use paths), not counted.
    let _ = cli_run(&f, &root, &dir.join("run"));
    for i in 0..runs {
        match cli_run(&f, &root, &dir.join("run")) {
            Ok(r) => res.cli.push(r),
            Err(e) => res.errors.push(format!("cli {i}: {e}")),
        }
        match rt.block_on(lib_run(&f, &disk, &dir, i)) {
            Ok(r) => res.lib.push(r),
            Err(e) => res.errors.push(format!("lib {i}: {e}")),
        }
        match rt.block_on(qemu_ready(&f, i)) {
            Ok(r) => res.qemu_ready_ms.push(r),
            Err(e) => res.errors.push(format!("qemu {i}: {e}")),
        }
    }
    std::fs::write(out, serde_json::to_vec(&res).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn print(name: &str, xs: Vec<f64>) -> Option<Stats> {
    vpod_benches::stats_row(name, &xs)
}

fn main() {
    if let Some(out) = vpod_benches::inner_arg() {
        inner(&out);
        return;
    }
    let _ = files();
    let (where_, r): (_, Inner) = vpod_benches::run_inner_as("pod", &workspace());
    for e in &r.errors {
        println!("error: {e}");
    }
    println!(
        "\npod start: {} runs each, on {where_} (ms)",
        r.cli.len().max(r.lib.len())
    );
    vpod_benches::stats_header();
    let first = print(
        "vpod run -> first line",
        r.cli.iter().map(|x| x.first_line_ms).collect(),
    );
    print(
        "vpod run -> exit",
        r.cli.iter().map(|x| x.exit_ms).collect(),
    );
    println!("stages (sandbox library, in-process):");
    let col = |f: fn(&LibRun) -> f64| r.lib.iter().map(f).collect::<Vec<_>>();
    print("  ephemeral disk + slots", col(|x| x.disk_ms));
    print("  VM start (VMM build)", col(|x| x.vm_start_ms));
    print("  boot to agent READY", col(|x| x.ready_ms));
    print("  mount ephemeral disk", col(|x| x.ephemeral_mount_ms));
    print("  create container", col(|x| x.create_ms));
    print("  start -> first output", col(|x| x.start_to_output_ms));
    let lib_first = print("  pod start -> first output", col(|x| x.first_total_ms));
    println!("second container in the running pod:");
    print("  create", col(|x| x.second_create_ms));
    print(
        "  start -> first output",
        col(|x| x.second_start_to_output_ms),
    );
    let second = print("  total", col(|x| x.second_total_ms));
    print("pod shutdown", col(|x| x.shutdown_ms));
    println!("baseline:");
    let qemu = print("  QEMU microvm boot->READY", r.qemu_ready_ms.clone());
    let ratio = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
        (Some(a), Some(b)) if b.p50 > 0.0 => Some(a.p50 / b.p50),
        _ => None,
    };
    let r1 = ratio(first, qemu);
    let r2 = ratio(lib_first, qemu);
    println!(
        "ratios (p50): vpod run first line / QEMU boot = {}; library pod start / QEMU boot = {}",
        r1.map_or("-".into(), |v| format!("{v:.2}")),
        r2.map_or("-".into(), |v| format!("{v:.2}"))
    );
    let json = serde_json::json!({
        "where": where_,
        "runs": r.cli.len(),
        "vpod_run_first_line_ms": first,
        "vpod_run_exit_ms": Stats::of(&r.cli.iter().map(|x| x.exit_ms).collect::<Vec<_>>()),
        "library": r.lib,
        "library_pod_start_ms": lib_first,
        "second_container_ms": second,
        "qemu_boot_to_ready_ms": qemu,
        "ratio_vpod_run_first_line_to_qemu_ready_p50": r1,
        "ratio_library_pod_start_to_qemu_ready_p50": r2,
        "errors": r.errors,
    });
    let path = out_dir().join("pod.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
