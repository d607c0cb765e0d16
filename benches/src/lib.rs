//! Shared helpers of vpod's benchmarks: statistics, tables, JSON output.

#![warn(missing_docs)]

use std::path::PathBuf;

/// min / p50 / p90 / max of a sample (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stats {
    /// Sample size.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// The statistics of `xs`; `None` for an empty sample.
    pub fn of(xs: &[f64]) -> Option<Stats> {
        if xs.is_empty() {
            return None;
        }
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            min: v[0],
            p50: rank(0.5),
            p90: rank(0.9),
            max: v[v.len() - 1],
        })
    }
}

/// `<workspace>/target/bench` (or `$CARGO_TARGET_DIR/bench`), created.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// Prints a row of a fixed-width table.
pub fn row(cells: &[String]) {
    let line: Vec<String> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                format!("{c:<28}")
            } else {
                format!("{c:>10}")
            }
        })
        .collect();
    println!("{}", line.join(" "));
}

/// Prints `label`'s min / p50 / p90 / max as a table row ("-" for none).
pub fn print_stats(label: &str, s: Option<Stats>) {
    match s {
        Some(s) => row(&[
            label.into(),
            format!("{:.1}", s.min),
            format!("{:.1}", s.p50),
            format!("{:.1}", s.p90),
            format!("{:.1}", s.max),
        ]),
        None => row(&[label.into(), "-".into()]),
    }
}

/// Prints the row of sample `xs` and returns its statistics.
pub fn stats_row(label: &str, xs: &[f64]) -> Option<Stats> {
    let s = Stats::of(xs);
    print_stats(label, s);
    s
}

/// The header of a [`print_stats`] table.
pub fn stats_header() {
    row(&[
        "".into(),
        "min".into(),
        "p50".into(),
        "p90".into(),
        "max".into(),
    ]);
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace dir")
}

/// The `--inner <json>` argument of a bench's inner half (see [`run_inner`]).
pub fn inner_arg() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let pos = args.iter().position(|a| a == "--inner")?;
    args.get(pos + 1).map(PathBuf::from)
}

/// [`run_inner`], then the inner half's JSON read back as `T`.
pub fn run_inner_as<T: serde::de::DeserializeOwned>(
    name: &str,
    workspace: &std::path::Path,
) -> (&'static str, T) {
    let (where_, json) = run_inner(name, workspace);
    let data = std::fs::read(&json).expect("the inner bench's JSON");
    (
        where_,
        serde_json::from_slice(&data).expect("parse the inner bench's JSON"),
    )
}

/// Runs this bench binary again with `--inner <json>` where VMs can boot: on
/// this host when its KVM runs Linux guests, else inside the test bed's L1
/// (sharing `workspace`). Returns where it ran ("kvm" or "testbed") and the
/// JSON file the inner run wrote.
pub fn run_inner(name: &str, workspace: &std::path::Path) -> (&'static str, PathBuf) {
    let verdict = vpod_testbed::probe::probe();
    let inner_json = out_dir().join(format!("{name}-inner.json"));
    let _ = std::fs::remove_file(&inner_json);
    let exe = std::env::current_exe().expect("current exe");
    let argv = vec![
        exe.into_os_string(),
        "--inner".into(),
        inner_json.clone().into_os_string(),
    ];
    if verdict.is_direct() {
        let st = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .expect("run the inner bench");
        assert!(st.success(), "inner bench failed");
        ("kvm", inner_json)
    } else {
        let mut opts = vpod_testbed::RunOptions::new(argv).expect("test bed options");
        opts.shares = vec![workspace.to_path_buf()];
        // One L1 vCPU, as the test runner uses (see testbed/cargo-runner): a 2-vCPU L1 stalled
        // after a dozen boots.
        opts.smp = std::env::var("VPOD_TESTBED_SMP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        match vpod_testbed::run(&opts) {
            Ok(o) if o.status == 0 => {}
            Ok(o) => panic!("inner bench exited {}", o.status),
            Err(e) => panic!("test bed: {e}"),
        }
        ("testbed", inner_json)
    }
}

/// Kernel command line QEMU's microvm baseline boots with (the same switches
/// vpod-vmm's builder puts on its own command line).
pub const MICROVM_APPEND: &str =
    "console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux random.trust_cpu=on quiet";

/// QEMU `-M microvm` booting `kernel` + `initrd` with an in-kernel vsock
/// device (`cid`), console discarded: the baseline of the boot and pod
/// benchmarks.
pub fn qemu_microvm(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    mem_mib: u32,
    cid: u32,
) -> std::process::Command {
    let mut c = std::process::Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        "1",
        "-m",
        &mem_mib.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "null",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", MICROVM_APPEND])
    .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    c
}

/// vsock "any CID" (VMADDR_CID_ANY) for host-side AF_VSOCK listeners.
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// Resolves when a guest behind in-kernel vsock makes its READY call (port
/// 1025) to this host, or fails after `timeout`.
pub async fn vsock_ready(
    timeout: std::time::Duration,
) -> Result<impl std::future::Future<Output = Result<u64, vpod_agent_api::ready::ReadyError>>, String>
{
    use vpod_agent_api::ready::{answer_ready, ReadyError};
    use vpod_agent_api::AGENT_READY_PORT;
    let addr = tokio_vsock::VsockAddr::new(VMADDR_CID_ANY, AGENT_READY_PORT);
    let listener = match tokio_vsock::VsockListener::bind(addr) {
        // No AF_VSOCK yet: the kernel could not autoload it (the test bed's
        // L1 runs its module tools in a chroot); QEMU needs vhost_vsock too.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let _ = std::process::Command::new("modprobe")
                .arg("vhost_vsock")
                .status();
            tokio_vsock::VsockListener::bind(addr)
        }
        r => r,
    }
    .map_err(|e| format!("vsock listener on port {AGENT_READY_PORT}: {e}"))?;
    Ok(async move {
        tokio::time::timeout(timeout, async {
            let (mut s, _) = listener.accept().await?;
            answer_ready(&mut s).await
        })
        .await
        .map_err(|_| ReadyError::Timeout(timeout))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.min, s.p50, s.p90, s.max), (1.0, 3.0, 5.0, 5.0));
        assert!(Stats::of(&[]).is_none());
    }
}
