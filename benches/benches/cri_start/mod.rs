//! One CRI pod start as kubelet makes it (RunPodSandbox, CreateContainer, StartContainer, then
//! the container's first log line), timed stage by stage; shared by the CRI benchmarks.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_benches::{stats_header, stats_row, Stats};
use vpod_test_support::cri::{self, Cri};

const OUTPUT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Run {
    pub run_pod_sandbox_ms: f64,
    pub create_container_ms: f64,
    pub start_container_ms: f64,
    /// StartContainer's return to the first line in the log.
    pub to_first_output_ms: f64,
    /// RunPodSandbox's call to the first output line.
    pub total_ms: f64,
    pub stop_remove_ms: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
/// What the measuring side hands back: the runs of each handler, and what failed.
pub struct Inner {
    /// Runs by runtime handler.
    pub runs: std::collections::BTreeMap<String, Vec<Run>>,
    /// Errors, each naming its handler and stage.
    pub errors: Vec<String>,
}

/// Pod `i` of `handler` with `image`, its logs under `logs`; stopped and removed after.
pub async fn one(
    logs: &Path,
    client: &mut Cri,
    handler: &str,
    image: &str,
    i: usize,
) -> Result<Run, String> {
    let uid = format!("0d3f6a1c-0000-4000-8000-{i:012}");
    let name = format!("bench-{handler}-{i}");
    let pod = cri::pod_config(&name, &uid, logs);
    std::fs::create_dir_all(Path::new(&pod.log_directory).join("app")).unwrap();
    let log = Path::new(&pod.log_directory).join("app/0.log");
    let container = cri::container_config(
        "app",
        image,
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

/// Prints the stages' table of `runs` under `title`; their JSON, and the p50 of the total.
pub fn report(title: &str, runs: &[Run]) -> (serde_json::Value, Option<f64>) {
    println!("\n{title}: {} pods (ms)", runs.len());
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
    let p50 = Stats::of(&col(|x| x.total_ms)).map(|s| s.p50);
    (serde_json::json!({"stages": stages, "runs": runs}), p50)
}
