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

mod cri_start;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cri_start::{one, report, Inner};
use vpod_benches::{out_dir, workspace};
use vpod_test_support::containerd::{Containerd, CRI_NAMESPACE, RUNC, VPOD};
use vpod_test_support::cri::Cri;

const IMAGE: &str = "docker.io/library/vpod-bench:1";

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
    let logs = c.dir.join("pod-logs");
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
            if let Err(e) = one(&logs, &mut client, h, IMAGE, 999_000).await {
                r.errors.push(format!("warm-up: {e}"));
            }
        }
        for i in 0..runs {
            for h in [RUNC, VPOD] {
                match one(&logs, &mut client, h, IMAGE, i).await {
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
        let title =
            format!("CRI pod start through containerd 1.6, runtime handler `{h}`, on {where_}");
        let (j, p) = report(&title, of(h));
        p50.insert(h, p);
        json[h] = j;
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
