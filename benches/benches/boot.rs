//! `make bench-boot`: boot to agent ready, vpod-vmm vs QEMU microvm on the same kernel and initramfs.
//!
//! On the host (whatever its KVM): VMM setup time until the first KVM_RUN (`--metrics`), which even
//! kvm_pvm runs. On a real KVM (directly, or inside the test bed's L1): `BENCH_BOOTS` (default 20)
//! boots of each VMM, one at a time, each until the guest agent's READY call reaches the host over
//! guest-initiated vsock (port 1025; vpod-init makes it the moment its agent listens):
//! - vpod-vmm: userspace vsock, the host end a unix socket (`<uds>_1025`);
//! - QEMU `-M microvm,acpi=off` with `vhost-vsock-device` (in-kernel vsock: the host end an
//!   AF_VSOCK listener), console discarded in both.
//!
//! Afterwards the host connects to the agent (port 1024) for its BootTimes.
//!
//! Stages come from the VMM's metrics (setup) and the agent's BootTimes (guest clock: kernel until
//! init, init until the listener is bound). VM exits until agent-ready are read, for both VMMs alike,
//! from the VM's KVM debugfs dir while it still runs; RSS from /proc. Table on stdout, JSON in
//! `target/bench/boot.json`.
//!
//! The jail's stage (`boot/jail.rs`): the same boots through the VMM process pods use, jailed and
//! not, interleaved with the above; on the host, that process's start jailed and not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::{BootTimesRequest, PingRequest, ShutdownKind, ShutdownRequest};
use vpod_agent_api::ready::ReadyError;
use vpod_agent_api::{AgentClient, ReadyListener, AGENT_VSOCK_PORT};
use vpod_benches::{out_dir, qemu_microvm, row, vsock_ready, workspace, Stats};

#[path = "boot/jail.rs"]
mod jail;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a VMM that never announces itself is checked for having exited.
const CHILD_CHECK: Duration = Duration::from_millis(20);
const MEM_MIB: u32 = 256;

fn need(p: PathBuf, how: &str) -> PathBuf {
    if !p.exists() {
        eprintln!("bench boot: {} is missing: {how}", p.display());
        std::process::exit(1);
    }
    p
}

struct Files {
    vmm: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn files() -> Files {
    let ws = workspace();
    Files {
        vmm: need(ws.join("target/release/vpod-vmm"), "run `make build`"),
        kernel: need(ws.join("target/guest/vmlinux"), "run `make guest`"),
        initrd: need(ws.join("target/guest/initramfs.cpio"), "run `make guest`"),
    }
}

/// One boot, as measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Boot {
    /// Host: spawn until the agent answered a Ping.
    ready_ms: f64,
    /// VMM process start until the first KVM_RUN (vpod only: from its metrics).
    setup_ms: Option<f64>,
    /// Guest clock: kernel start until vpod-init's main().
    kernel_ms: f64,
    /// Guest clock: init start until the vsock listener is bound.
    init_ms: f64,
    /// KVM debugfs counters of the VM at agent-ready.
    exits: BTreeMap<String, u64>,
    rss_kib: u64,
    /// RSS of the guest-memory mapping (pages the guest touched).
    guest_rss_kib: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inner {
    vpod: Vec<Boot>,
    /// Through the VMM process (vpod-sandbox's VmProcess), jailed and not.
    jailed: Vec<jail::ProcessBoot>,
    not_jailed: Vec<jail::ProcessBoot>,
    qemu: Vec<Boot>,
    qemu_error: Option<String>,
}

/// How long a VMM may take to exit after the guest's poweroff: a stuck one fails this boot, it
/// never stalls the bench.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for `child` to exit, at most `limit`.
async fn wait_exit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            return Err(format!("VMM still running {limit:?} after poweroff"));
        }
        tokio::time::sleep(CHILD_CHECK).await;
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// KVM's per-VM debugfs dir of process `pid` (`/sys/kernel/debug/kvm/<pid>-<fd>`).
fn kvm_debugfs_counters(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/sys/kernel/debug/kvm") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{pid}-")) {
            continue;
        }
        for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            let fname = f.file_name().to_string_lossy().into_owned();
            if fname == "exits" || fname.ends_with("_exits") {
                if let Some(v) = std::fs::read_to_string(f.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                {
                    *out.entry(fname).or_insert(0) += v;
                }
            }
        }
    }
    out
}

/// (total RSS, RSS of the mapping that is the guest's memory) in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let total = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut guest, mut in_guest) = (0, false);
    for l in smaps.lines() {
        let mut it = l.split_whitespace();
        let first = it.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let size = u64::from_str_radix(b, 16)
                .unwrap_or(0)
                .saturating_sub(u64::from_str_radix(a, 16).unwrap_or(0));
            in_guest = size == u64::from(MEM_MIB) << 20;
        } else if in_guest && first == "Rss:" {
            guest += it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (total, guest)
}

async fn ping_uds(uds: &Path) -> Option<AgentClient<vpod_agent_api::AgentChannel>> {
    let mut c = vpod_agent_api::connect(uds, AGENT_VSOCK_PORT).await.ok()?;
    c.ping(PingRequest { token: 1 }).await.ok()?;
    Some(c)
}

async fn ping_vsock(cid: u32) -> Option<AgentClient<vpod_agent_api::AgentChannel>> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| async move {
        let s =
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, AGENT_VSOCK_PORT))
                .await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
    });
    let ch = tonic::transport::Endpoint::from_static("http://vpod-agent")
        .connect_with_connector(connector)
        .await
        .ok()?;
    let mut c = AgentClient::new(vpod_agent_api::AgentChannel::from(ch));
    c.ping(PingRequest { token: 1 }).await.ok()?;
    Some(c)
}

/// Waits for the guest's READY call (`ready`), watching that the VMM is still alive; returns the
/// time since spawn. The guest announces itself the moment its agent listens: no host polling,
/// so neither the figure nor the VM's exit count carries probe traffic.
async fn until_ready<Fut>(child: &mut Child, t0: Instant, ready: Fut) -> Result<f64, String>
where
    Fut: std::future::Future<Output = Result<u64, ReadyError>>,
{
    tokio::pin!(ready);
    loop {
        tokio::select! {
            r = &mut ready => {
                r.map_err(|e| e.to_string())?;
                return Ok(t0.elapsed().as_secs_f64() * 1e3);
            }
            _ = tokio::time::sleep(CHILD_CHECK) => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!("VMM exited ({st}) before the guest's READY call"));
                }
            }
        }
    }
}

/// Counters and RSS at agent-ready (read first, while nothing else has touched the VM), then
/// the guest's boot stages over a fresh agent connection.
async fn measured<F, Fut>(
    pid: u32,
    ready_ms: f64,
    connect: F,
) -> Result<(Boot, AgentClient<vpod_agent_api::AgentChannel>), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<AgentClient<vpod_agent_api::AgentChannel>>>,
{
    let exits = kvm_debugfs_counters(pid);
    let (rss_kib, guest_rss_kib) = rss(pid);
    let mut client = None;
    for _ in 0..50 {
        client = connect().await;
        if client.is_some() {
            break;
        }
        tokio::time::sleep(CHILD_CHECK).await;
    }
    let mut client = client.ok_or("the agent announced READY but does not answer")?;
    let t = client
        .boot_times(BootTimesRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let b = Boot {
        ready_ms,
        setup_ms: None,
        kernel_ms: t.init_start_boottime_ns as f64 / 1e6,
        init_ms: (t.agent_listening_boottime_ns - t.init_start_boottime_ns) as f64 / 1e6,
        exits,
        rss_kib,
        guest_rss_kib,
    };
    Ok((b, client))
}

/// The part of `vpod-vmm --metrics` JSON the bench reads.
#[derive(Deserialize)]
struct MetricsFile {
    metrics: VmmMetrics,
}

#[derive(Deserialize)]
struct VmmMetrics {
    start_to_first_kvm_run_us: Option<u64>,
}

/// vpod-vmm as both measurements run it: 1 vCPU, MEM_MIB, console off, metrics to `metrics`.
fn vmm_command(f: &Files, metrics: &Path) -> Command {
    let mut c = Command::new(&f.vmm);
    c.arg("--kernel")
        .arg(&f.kernel)
        .arg("--initrd")
        .arg(&f.initrd)
        .args([
            "--vcpus",
            "1",
            "--mem-mib",
            &MEM_MIB.to_string(),
            "--console",
            "off",
            "--metrics",
        ])
        .arg(metrics)
        .stdin(Stdio::null());
    c
}

async fn boot_vpod(f: &Files, dir: &Path, i: usize) -> Result<Boot, String> {
    let uds = dir.join(format!("vpod{i}.sock"));
    let metrics = dir.join(format!("vpod{i}.json"));
    // The guest's READY call lands on `<uds>_1025`: bound before the VM exists.
    let ready = ReadyListener::bind(&uds).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut child = vmm_command(f, &metrics)
        .arg("--vsock")
        .arg(&uds)
        .spawn()
        .map_err(|e| format!("spawn vpod-vmm: {e}"))?;
    let res = async {
        let ready_ms = until_ready(&mut child, t0, ready.wait(READY_TIMEOUT)).await?;
        let (mut b, mut c) = measured(child.id(), ready_ms, || ping_uds(&uds)).await?;
        let _ = c
            .shutdown(ShutdownRequest {
                kind: ShutdownKind::Poweroff as i32,
            })
            .await;
        let st = wait_exit(&mut child, EXIT_TIMEOUT).await?;
        if st.code() != Some(0) {
            return Err(format!("vpod-vmm exited {st} after poweroff"));
        }
        let m: MetricsFile =
            serde_json::from_slice(&std::fs::read(&metrics).map_err(|e| format!("metrics: {e}"))?)
                .map_err(|e| format!("metrics: {e}"))?;
        b.setup_ms = m
            .metrics
            .start_to_first_kvm_run_us
            .map(|us| us as f64 / 1e3);
        Ok(b)
    }
    .await;
    kill(&mut child);
    res
}

async fn boot_qemu(f: &Files, i: usize) -> Result<Boot, String> {
    let cid = 100 + i as u32;
    // vhost-vsock delivers the guest's READY call to an AF_VSOCK listener on this host.
    let ready = vsock_ready(READY_TIMEOUT).await?;
    let t0 = Instant::now();
    let mut child = qemu_microvm(&f.kernel, &f.initrd, MEM_MIB, cid)
        .spawn()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    let res = async {
        let ready_ms = until_ready(&mut child, t0, ready).await?;
        measured(child.id(), ready_ms, || ping_vsock(cid))
            .await
            .map(|(b, _)| b)
    }
    .await;
    kill(&mut child);
    if res.is_err() {
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut err);
        }
        return res.map_err(|e| format!("{e}; qemu stderr: {}", err.trim()));
    }
    res
}

/// The real-KVM part: runs where /dev/kvm runs Linux guests.
fn inner(out: &Path) {
    let f = files();
    let boots: usize = std::env::var("BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if !Path::new("/sys/kernel/debug/kvm").exists() {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .status();
    }
    let _ = Command::new("modprobe").arg("vhost_vsock").status();
    let dir = std::env::temp_dir().join(format!("vpod-bench-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut res = Inner::default();
    // The three ways of starting vpod-vmm alternate, so drift in the test bed hits them alike.
    for i in 0..boots {
        match rt.block_on(boot_vpod(&f, &dir, i)) {
            Ok(b) => res.vpod.push(b),
            Err(e) => {
                eprintln!("vpod boot {i}: {e}");
                std::process::exit(1);
            }
        }
        for jailed in [true, false] {
            match rt.block_on(jail::boot(&f, &dir, i, jailed)) {
                Ok(b) if jailed => res.jailed.push(b),
                Ok(b) => res.not_jailed.push(b),
                Err(e) => {
                    eprintln!("vpod boot {i} (VMM process, jailed: {jailed}): {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    for i in 0..boots {
        match rt.block_on(boot_qemu(&f, i)) {
            Ok(b) => res.qemu.push(b),
            Err(e) => {
                eprintln!("qemu boot {i}: {e}");
                res.qemu_error = Some(e);
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::write(out, serde_json::to_vec(&res).unwrap()).unwrap();
}

/// VMM setup until the first KVM_RUN on this host's own /dev/kvm (kvm_pvm runs that part).
fn host_setup(f: &Files, runs: usize) -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("vpod-bench-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v = Vec::new();
    for i in 0..runs {
        let metrics = dir.join(format!("m{i}.json"));
        let Ok(mut child) = vmm_command(f, &metrics).spawn() else {
            break;
        };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signals our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        if let Some(us) = std::fs::read(&metrics)
            .ok()
            .and_then(|b| serde_json::from_slice::<MetricsFile>(&b).ok())
            .and_then(|m| m.metrics.start_to_first_kvm_run_us)
        {
            v.push(us as f64 / 1e3);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    v
}

fn exits_total(b: &Boot) -> f64 {
    b.exits.get("exits").copied().unwrap_or(0) as f64
}

fn stat(xs: impl Iterator<Item = f64>) -> Option<Stats> {
    Stats::of(&xs.collect::<Vec<_>>())
}

fn print_stats(name: &str, s: Option<Stats>, unit: &str) {
    vpod_benches::print_stats(&format!("{name} ({unit})"), s);
}

fn main() {
    if let Some(out) = vpod_benches::inner_arg() {
        inner(&out);
        return;
    }
    let f = files();
    let host = host_setup(&f, 10);
    let host_jail = jail::host_starts(&f, 10);
    let (where_, r): (_, Inner) = vpod_benches::run_inner_as("boot", &workspace());

    println!(
        "\nboot to agent ready: {} boots each, on {where_} (ms unless noted)",
        r.vpod.len()
    );
    row(&[
        "vpod-vmm".into(),
        "min".into(),
        "p50".into(),
        "p90".into(),
        "max".into(),
    ]);
    print_stats(
        "VMM setup -> 1st KVM_RUN",
        stat(r.vpod.iter().filter_map(|b| b.setup_ms)),
        "ms",
    );
    print_stats(
        "kernel -> init",
        stat(r.vpod.iter().map(|b| b.kernel_ms)),
        "ms",
    );
    print_stats(
        "init -> agent listening",
        stat(r.vpod.iter().map(|b| b.init_ms)),
        "ms",
    );
    // The guest clock starts with timekeeping, not at the first instruction: what the stages above
    // don't cover is early boot (decompression-free PVH entry to timekeeping) plus the READY call.
    let vpod_agent = stat(
        r.vpod
            .iter()
            .map(|b| b.ready_ms - b.setup_ms.unwrap_or(0.0) - b.kernel_ms - b.init_ms),
    );
    print_stats("rest: early boot + READY call", vpod_agent, "ms");
    let vpod_total = stat(r.vpod.iter().map(|b| b.ready_ms));
    print_stats("total: spawn -> READY at host", vpod_total, "ms");
    let vpod_exits = stat(r.vpod.iter().map(exits_total));
    print_stats("VM exits to agent ready", vpod_exits, "n");
    print_stats(
        "VMM RSS beyond guest mem",
        stat(r.vpod.iter().map(|b| (b.rss_kib - b.guest_rss_kib) as f64)),
        "KiB",
    );
    print_stats(
        "guest pages touched",
        stat(r.vpod.iter().map(|b| b.guest_rss_kib as f64)),
        "KiB",
    );
    row(&[
        "QEMU microvm".into(),
        "min".into(),
        "p50".into(),
        "p90".into(),
        "max".into(),
    ]);
    print_stats(
        "kernel -> init",
        stat(r.qemu.iter().map(|b| b.kernel_ms)),
        "ms",
    );
    print_stats(
        "init -> agent listening",
        stat(r.qemu.iter().map(|b| b.init_ms)),
        "ms",
    );
    let qemu_total = stat(r.qemu.iter().map(|b| b.ready_ms));
    print_stats("total: spawn -> READY at host", qemu_total, "ms");
    let qemu_exits = stat(r.qemu.iter().map(exits_total));
    print_stats("VM exits to agent ready", qemu_exits, "n");
    print_stats(
        "QEMU RSS",
        stat(r.qemu.iter().map(|b| b.rss_kib as f64)),
        "KiB",
    );
    print_stats("host: VMM setup -> 1st KVM_RUN", Stats::of(&host), "ms");
    if let Some(e) = &r.qemu_error {
        println!("QEMU baseline failed: {e}");
    }

    let mut reasons: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mean = |bs: &[Boot], k: &str| {
        if bs.is_empty() {
            0.0
        } else {
            bs.iter()
                .map(|b| b.exits.get(k).copied().unwrap_or(0) as f64)
                .sum::<f64>()
                / bs.len() as f64
        }
    };
    for k in r.vpod.iter().chain(&r.qemu).flat_map(|b| b.exits.keys()) {
        reasons.insert(k.clone(), (mean(&r.vpod, k), mean(&r.qemu, k)));
    }
    println!("\nVM exits until agent ready, by reason (mean per boot)");
    row(&["reason".into(), "vpod".into(), "qemu".into()]);
    for (k, (a, b)) in &reasons {
        if *a > 0.0 || *b > 0.0 {
            row(&[k.clone(), format!("{a:.0}"), format!("{b:.0}")]);
        }
    }
    let ratio = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
        (Some(a), Some(b)) if b.p50 > 0.0 => Some(a.p50 / b.p50),
        _ => None,
    };
    let ratio_p50 = ratio(vpod_total, qemu_total);
    let ratio_exits = ratio(vpod_exits, qemu_exits);
    println!(
        "\nratio vpod/QEMU: boot p50 {}, exits p50 {}   (targets: <= 0.5 each)",
        ratio_p50.map_or("-".into(), |r| format!("{r:.2}")),
        ratio_exits.map_or("-".into(), |r| format!("{r:.2}"))
    );
    let jail = jail::report(
        (&r.jailed, &r.not_jailed),
        &host_jail,
        qemu_total.map(|s| s.p50),
    );
    let json = serde_json::json!({
        "jail": jail,
        "vpod": {
            "p50_ms": vpod_total.map(|s| s.p50), "p90_ms": vpod_total.map(|s| s.p90),
            "exits": vpod_exits.map(|s| s.p50),
            "rss_kib": stat(r.vpod.iter().map(|b| b.rss_kib as f64)).map(|s| s.p50),
            "rss_beyond_guest_kib": stat(r.vpod.iter().map(|b| (b.rss_kib - b.guest_rss_kib) as f64)).map(|s| s.p50),
            "stages_p50_ms": {
                "setup": stat(r.vpod.iter().filter_map(|b| b.setup_ms)).map(|s| s.p50),
                "kernel": stat(r.vpod.iter().map(|b| b.kernel_ms)).map(|s| s.p50),
                "init": stat(r.vpod.iter().map(|b| b.init_ms)).map(|s| s.p50),
                "agent": vpod_agent.map(|s| s.p50),
            },
            "boots": r.vpod,
        },
        "qemu_microvm": {
            "p50_ms": qemu_total.map(|s| s.p50), "p90_ms": qemu_total.map(|s| s.p90),
            "exits": qemu_exits.map(|s| s.p50), "boots": r.qemu, "error": r.qemu_error,
        },
        "host_setup_to_first_kvm_run_ms": Stats::of(&host),
        "ratio_p50": ratio_p50,
        "ratio_exits": ratio_exits,
        "where": where_,
    });
    let path = out_dir().join("boot.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
