//! `make bench-testbed`: what one test bed run costs, so VM tests know their budget.
//! L1 boot stages (seconds of L1 uptime, from its init's reports) and the host wall time of
//! `testbed run -- true`, over 5 runs; table on stdout, JSON in target/bench/testbed.json.

use std::time::Instant;

use vpod_benches::{out_dir, row, Stats};
use vpod_testbed::{l1, run, RunOptions};

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    if let Err(e) = l1::ensure() {
        eprintln!("bench testbed: {e}");
        std::process::exit(1);
    }
    let ensure_s = t.elapsed().as_secs_f64();

    let (mut init, mut kvm, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let opts = RunOptions::new(vec!["true".into()]).expect("cwd");
        let t = Instant::now();
        match run(&opts) {
            Ok(out) if out.status == 0 => {
                init.extend(out.timings.init_s);
                kvm.extend(out.timings.kvm_s);
                wall.push(t.elapsed().as_secs_f64());
            }
            Ok(out) => eprintln!("run {i}: `true` exited {}", out.status),
            Err(e) => eprintln!("run {i}: {e}"),
        }
    }
    if wall.len() != runs {
        eprintln!("bench testbed: {} of {runs} runs failed", runs - wall.len());
        std::process::exit(1);
    }
    let (init, kvm, wall) = (
        Stats::of(&init).unwrap(),
        Stats::of(&kvm).unwrap(),
        Stats::of(&wall).unwrap(),
    );
    println!("\ntest bed cost, {runs} runs of `testbed run -- true` (seconds)");
    row(&[
        "stage".into(),
        "min".into(),
        "p50".into(),
        "p90".into(),
        "max".into(),
    ]);
    for (name, s) in [
        ("L1 kernel -> init (uptime)", init),
        ("L1 ready for cmd (uptime)", kvm),
        ("run -- true (host wall)", wall),
    ] {
        row(&[
            name.into(),
            format!("{:.2}", s.min),
            format!("{:.2}", s.p50),
            format!("{:.2}", s.p90),
            format!("{:.2}", s.max),
        ]);
    }
    println!("cached boot files lookup: {ensure_s:.3} s");
    let json = serde_json::json!({
        "runs": runs,
        "l1_init_s": init, "l1_ready_s": kvm, "run_true_wall_s": wall,
        "boot_files_lookup_s": ensure_s,
    });
    let path = out_dir().join("testbed.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    println!("wrote {}", path.display());
}
