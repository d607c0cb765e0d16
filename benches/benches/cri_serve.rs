//! `make bench-cri-serve`: pod start through `vpod serve` (vpod's own CRI server, no
//! containerd) against containerd 1.6 with vpod's shim and with runc, in the same run.
//!
//! Each run is what kubelet does for a one-container pod (RunPodSandbox, CreateContainer,
//! StartContainer, the first line in the CRI log), then Stop + Remove, timed apart. Runs
//! alternate between the three so drift on a shared machine hits all. `BENCH_RUNS` (default 20)
//! pods each, on a real KVM (directly or in the test bed's L1). Table on stdout, JSON in
//! `target/bench/cri-serve.json`. Target (issue 16): `vpod serve` p50 ≤ 1.0× containerd+runc's.

mod cri_start;

use std::path::PathBuf;
use std::time::Duration;

use cri_start::{one, report, Inner};
use vpod_benches::{out_dir, workspace};
use vpod_test_support::containerd::{Containerd, CRI_NAMESPACE, PAUSE_IMAGE, RUNC, VPOD};
use vpod_test_support::cri::Cri;
use vpod_test_support::serve::{Serve, IMAGE};

/// The handler name the tables give `vpod serve`.
const SERVE: &str = "vpod-serve";

fn release(name: &str) -> PathBuf {
    let p = workspace().join("target/release").join(name);
    if !p.exists() {
        eprintln!(
            "bench cri-serve: {} is missing: run `make build`",
            p.display()
        );
        std::process::exit(1);
    }
    p
}

fn inner(out: &std::path::Path) {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let c = Containerd::start("bench-serve", &release("containerd-shim-vpod-v2"), true);
    c.import_busybox(
        CRI_NAMESPACE,
        IMAGE,
        Vec::new(),
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let serve = Serve::start("bench", &release("vpod"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut r = Inner::default();
    rt.block_on(async {
        let mut ctrd = Cri::connect(&c.sock()).await.expect("containerd CRI");
        for image in [IMAGE, PAUSE_IMAGE] {
            ctrd.wait_image(image, Duration::from_secs(60))
                .await
                .expect("image");
        }
        let mut own = Cri::connect(&serve.sock()).await.expect("vpod serve CRI");
        let (ctrd_logs, serve_logs) = (c.dir.join("pod-logs"), serve.dir.join("pod-logs"));
        for i in (0..runs).map(Some).chain([None]) {
            // The first round (None) is unmeasured: caches warm.
            let n = i.unwrap_or(999_000);
            for h in [RUNC, VPOD, SERVE] {
                let res = match h {
                    SERVE => one(&serve_logs, &mut own, "", IMAGE, n).await,
                    _ => one(&ctrd_logs, &mut ctrd, h, IMAGE, n).await,
                };
                match (res, i) {
                    (Ok(run), Some(_)) => r.runs.entry(h.to_owned()).or_default().push(run),
                    (Ok(_), None) => {}
                    (Err(e), _) => r.errors.push(format!("{h}: {e}")),
                }
            }
            if i.is_none() {
                break;
            }
        }
    });
    if !r.errors.is_empty() {
        eprintln!(
            "containerd log:\n{}\nvpod serve log:\n{}",
            c.log(),
            serve.log()
        );
    }
    std::fs::write(out, serde_json::to_vec(&r).unwrap()).unwrap();
}

fn main() {
    if let Some(out) = vpod_benches::inner_arg() {
        inner(&out);
        return;
    }
    let _ = (release("vpod"), release("containerd-shim-vpod-v2"));
    let (where_, r): (_, Inner) = vpod_benches::run_inner_as("cri-serve", &workspace());
    for e in &r.errors {
        println!("error: {e}");
    }
    let empty = Vec::new();
    let mut json = serde_json::json!({"where": where_, "errors": r.errors});
    let mut p50 = std::collections::BTreeMap::new();
    for (h, what) in [
        (RUNC, "containerd 1.6 + runc"),
        (VPOD, "containerd 1.6 + vpod's shim"),
        (SERVE, "vpod serve"),
    ] {
        let (j, p) = report(
            &format!("CRI pod start, {what}, on {where_}"),
            r.runs.get(h).unwrap_or(&empty),
        );
        p50.insert(h, p);
        json[h] = j;
    }
    let ratio = |a: &str, b: &str| match (p50[a], p50[b]) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let (s_runc, s_vpod) = (ratio(SERVE, RUNC), ratio(SERVE, VPOD));
    println!(
        "\nratio (p50 total): vpod serve / containerd+runc = {}",
        show(s_runc)
    );
    println!(
        "ratio (p50 total): vpod serve / containerd+vpod = {}",
        show(s_vpod)
    );
    json["ratio_serve_to_runc_total_p50"] = serde_json::json!(s_runc);
    json["ratio_serve_to_containerd_vpod_total_p50"] = serde_json::json!(s_vpod);
    let path = out_dir().join("cri-serve.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
