//! `make bench-cri-containerd`: pod start through containerd's CRI plugin,
//! vpod against runc in the same containerd.
//!
//! Each run is what kubelet does for a one-container pod: RunPodSandbox,
//! CreateContainer, StartContainer, then the container's first output line
//! in its CRI log file (written by containerd from the task's stdout). The
//! pod is stopped and removed after each run (timed separately). Runs
//! alternate between the runtimes so drift on a shared machine hits both.
//!
//! `BENCH_RUNS` (default 20) pods per runtime, on a real KVM (directly or
//! in the test bed's L1). Table on stdout, JSON in
//! `target/bench/cri-containerd.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_benches::{out_dir, stats_header, stats_row, workspace, Stats};
use vpod_test_support::containerd::{Containerd, CRI_NAMESPACE, RUNC, VPOD};
use vpod_test_support::cri::{self, Cri};

const IMAGE: &str = "docker.io/library/vpod-bench:1";
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Run {
    run_pod_sandbox_ms: f64,
    create_container_ms: f64,
    start_container_ms: f64,
    /// StartContainer's return to the first line in the log.
    to_first_output_ms: f64,
    /// RunPodSandbox's call to the first output line.
    total_ms: f64,
    stop_remove_ms: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inner {
    runs: std::collections::BTreeMap<String, Vec<Run>>,
    errors: Vec<String>,
}

fn shim() -> PathBuf {
    let p = workspace().join("target/release/containerd-shim-vpod-v2");
    if !p.exists() {
        eprintln!(
            "bench cri-containerd: {} is missing: run `make build`",
            p.display()
        );
        std::process::exit(1);
    }
    p
}

async fn one(c: &Containerd, client: &mut Cri, handler: &str, i: usize) -> Result<Run, String> {
    let uid = format!("0d3f6a1c-0000-4000-8000-{i:012}");
    let name = format!("bench-{handler}-{i}");
    let pod = cri::pod_config(&name, &uid, &c.dir.join("pod-logs"));
    std::fs::create_dir_all(Path::new(&pod.log_directory).join("app")).unwrap();
    let log = Path::new(&pod.log_directory).join("app/0.log");
    let container = cri::container_config(
        "app",
        IMAGE,
        &["sh", "-c", "echo first-output; exec sleep 2147483647"],
    );
    let t0 = Instant::now();
    let pod_id = client
        .run_pod(&pod, handler)
        .await
        .map_err(|s| format!("{handler} RunPodSandbox: {s}"))?;
    let t1 = Instant::now();
    let id = client
        .runtime
        .create_container(cri::v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .map_err(|s| format!("{handler} CreateContainer: {s}"))?
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    client
        .runtime
        .start_container(cri::v1::StartContainerRequest { container_id: id })
        .await
        .map_err(|s| format!("{handler} StartContainer: {s}"))?;
    let t3 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("first-output") {
            break;
        }
        if t3.elapsed() > OUTPUT_TIMEOUT {
            return Err(format!("{handler}: no output in {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t4 = Instant::now();
    client
        .stop_and_remove_pod(&pod_id)
        .await
        .map_err(|s| format!("{handler} stop/remove: {s}"))?;
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    Ok(Run {
        run_pod_sandbox_ms: ms(t0, t1),
        create_container_ms: ms(t1, t2),
        start_container_ms: ms(t2, t3),
        to_first_output_ms: ms(t3, t4),
        total_ms: ms(t0, t4),
        stop_remove_ms: ms(t4, Instant::now()),
    })
}

fn inner(out: &Path) {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let c = Containerd::start("bench", &shim(), true);
    c.import_busybox(
        CRI_NAMESPACE,
        IMAGE,
        Vec::new(),
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut r = Inner::default();
    rt.block_on(async {
        let mut client = Cri::connect(&c.sock()).await.expect("CRI connect");
        for image in [IMAGE, vpod_test_support::containerd::PAUSE_IMAGE] {
            client
                .wait_image(image, Duration::from_secs(60))
                .await
                .expect("image");
        }
        // One unmeasured pod each: the rootfs cache and page cache warm.
        for h in [RUNC, VPOD] {
            if let Err(e) = one(&c, &mut client, h, 999_000).await {
                r.errors.push(format!("warm-up: {e}"));
            }
        }
        for i in 0..runs {
            for h in [RUNC, VPOD] {
                match one(&c, &mut client, h, i).await {
                    Ok(run) => r.runs.entry(h.to_owned()).or_default().push(run),
                    Err(e) => r.errors.push(e),
                }
            }
        }
    });
    if !r.errors.is_empty() {
        eprintln!("containerd log:\n{}", c.log());
    }
    std::fs::write(out, serde_json::to_vec(&r).unwrap()).unwrap();
}

fn main() {
    if let Some(out) = vpod_benches::inner_arg() {
        inner(&out);
        return;
    }
    let _ = shim();
    let (where_, r): (_, Inner) = vpod_benches::run_inner_as("cri-containerd", &workspace());
    for e in &r.errors {
        println!("error: {e}");
    }
    let empty = Vec::new();
    let of = |h: &str| r.runs.get(h).unwrap_or(&empty);
    let mut json = serde_json::json!({"where": where_, "errors": r.errors});
    let mut p50 = std::collections::BTreeMap::new();
    for h in [RUNC, VPOD] {
        let runs = of(h);
        println!(
            "\nCRI pod start through containerd 1.6, runtime handler `{h}`: {} pods, on {where_} (ms)",
            runs.len()
        );
        stats_header();
        let col = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let stages = serde_json::json!({
            "run_pod_sandbox_ms": stats_row("RunPodSandbox", &col(|x| x.run_pod_sandbox_ms)),
            "create_container_ms": stats_row("CreateContainer", &col(|x| x.create_container_ms)),
            "start_container_ms": stats_row("StartContainer", &col(|x| x.start_container_ms)),
            "to_first_output_ms": stats_row("started -> first log line", &col(|x| x.to_first_output_ms)),
            "total_ms": stats_row("total: Run -> first output", &col(|x| x.total_ms)),
            "stop_remove_ms": stats_row("StopPodSandbox + Remove", &col(|x| x.stop_remove_ms)),
        });
        p50.insert(h, Stats::of(&col(|x| x.total_ms)).map(|s| s.p50));
        json[h] = serde_json::json!({"stages": stages, "runs": runs});
    }
    let ratio = match (p50[VPOD], p50[RUNC]) {
        (Some(v), Some(r)) if r > 0.0 => Some(v / r),
        _ => None,
    };
    println!(
        "\nratio (p50 total): vpod / runc = {}",
        ratio.map_or("-".into(), |v| format!("{v:.2}"))
    );
    json["ratio_vpod_to_runc_total_p50"] = serde_json::json!(ratio);
    let path = out_dir().join("cri-containerd.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
