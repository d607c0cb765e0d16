//! The jail's stage of `make bench-boot`: the same boot as `boot_vpod` (kernel, initrd, 1 vCPU,
//! MEM_MIB, READY over vsock), but started the way pods start their VMM, through vpod-sandbox's
//! [`VmProcess`] (`vpod-vmm --control-fd`), once jailed (namespaces, pivot_root, own uid, no
//! capabilities, cgroup, seccomp enforced) and once not. Both go through the same control channel,
//! so the difference between them is the jail's cost.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::{ShutdownKind, ShutdownRequest};
use vpod_agent_api::ReadyListener;
use vpod_sandbox::vmm_process::{lease, VmmLaunch};
use vpod_sandbox::{VmProcess, VmmProcessConfig};
use vpod_vmm::{Console, VmConfig, VsockConfig};

use super::{measured, ping_uds, Files, CHILD_CHECK, EXIT_TIMEOUT, MEM_MIB, READY_TIMEOUT};

/// One boot through the VMM process, as measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessBoot {
    /// The boot's common figures (ready, stages, exits, RSS of the VMM process itself).
    pub boot: super::Boot,
    /// Host: VmProcess::start until the VMM's "started" answer (VM built, vCPU running).
    pub spawn_to_started_ms: f64,
    /// VMM: the jail's setup (fork, namespaces, root, ids, rlimits, cgroup, caps).
    pub jail_setup_ms: f64,
    /// VMM: process start until "started" (host files, jail, filters, build).
    pub process_to_started_ms: f64,
    /// The uid the VMM ran as (0 unjailed).
    pub uid: u32,
    /// RSS of the jail's waiter (the VMM's parent outside its PID namespace), KiB; 0 unjailed.
    #[serde(default)]
    pub waiter_rss_kib: u64,
}

/// The VMM process settings of one series: the jail on (defaults: enforce, cgroup) or off.
pub fn process_config(f: &Files, jailed: bool) -> VmmProcessConfig {
    VmmProcessConfig {
        binary: Some(f.vmm.clone()),
        jail: jailed,
        ..VmmProcessConfig::default()
    }
}

/// The VMM's own process: the jail's waiter's only child when jailed, else the spawned process.
pub fn vmm_pid(vm: &VmProcess, jailed: bool) -> u32 {
    let pid = vm.pid();
    if !jailed {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// Makes the pod dir and its vsock dir (owner-only; the vsock dir handed to the VMM's uid).
fn pod_dirs(dir: &Path, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    use std::os::unix::fs::DirBuilderExt;
    let pod_dir = dir.join(name);
    let vsock_dir = pod_dir.join("vsock");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&vsock_dir)
        .map_err(|e| format!("{}: {e}", vsock_dir.display()))?;
    Ok((pod_dir, vsock_dir))
}

/// Starts one VMM process for `vm` (a pod named `name` under `dir`), returning it with the
/// instant before the start call.
pub fn start(
    cfg: &VmmProcessConfig,
    dir: &Path,
    name: &str,
    vm: VmConfig,
    vsock_dir: std::path::PathBuf,
    extra_owned: &[&Path],
) -> Result<(VmProcess, Instant), String> {
    let lease = lease(cfg, name).map_err(|e| e.to_string())?;
    if let Some(l) = &lease {
        for p in [vsock_dir.as_path()]
            .into_iter()
            .chain(extra_owned.iter().copied())
        {
            std::os::unix::fs::lchown(p, Some(l.uid()), Some(l.gid()))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
    }
    let launch = VmmLaunch {
        pod_id: name.into(),
        pod_dir: dir.join(name),
        vm,
        vsock_dir,
        netns: None,
        lease,
    };
    let t0 = Instant::now();
    let vm = VmProcess::start(cfg, launch, READY_TIMEOUT).map_err(|e| e.to_string())?;
    Ok((vm, t0))
}

/// One boot to agent ready through the VMM process; then a poweroff, awaited.
pub async fn boot(f: &Files, dir: &Path, i: usize, jailed: bool) -> Result<ProcessBoot, String> {
    let name = format!("bench-{}-{i}", if jailed { "jailed" } else { "process" });
    let (_pod_dir, vsock_dir) = pod_dirs(dir, &name)?;
    let uds = vsock_dir.join("vsock.sock");
    let ready = ReadyListener::bind(&uds).map_err(|e| e.to_string())?;
    let mut vm = VmConfig::new(&f.kernel);
    vm.initrd = Some(f.initrd.clone());
    vm.mem_mib = MEM_MIB;
    vm.console = Console::Off;
    vm.vsock = Some(VsockConfig {
        uds_path: uds.clone(),
        guest_cid: 3,
    });
    let cfg = process_config(f, jailed);
    let (proc, t0) = start(&cfg, dir, &name, vm, vsock_dir, &[ready.path()])?;
    let report = proc.report();
    let res = async {
        let mut exit = proc.exit();
        let ready_ms = tokio::select! {
            r = ready.wait(READY_TIMEOUT) => {
                r.map_err(|e| e.to_string())?;
                t0.elapsed().as_secs_f64() * 1e3
            }
            _ = exit.wait_for(|e| e.is_some()) => {
                return Err(format!("VMM ended ({:?}) before the guest's READY call", *proc.exit().borrow()));
            }
        };
        let pid = vmm_pid(&proc, jailed);
        let waiter_rss_kib = if jailed { super::rss(proc.pid()).0 } else { 0 };
        let (mut b, mut c) = measured(pid, ready_ms, || ping_uds(&uds)).await?;
        b.setup_ms = proc
            .metrics()
            .map_err(|e| e.to_string())?
            .start_to_first_kvm_run_us
            .map(|us| us as f64 / 1e3);
        let _ = c
            .shutdown(ShutdownRequest {
                kind: ShutdownKind::Poweroff as i32,
            })
            .await;
        let ended = tokio::time::timeout(EXIT_TIMEOUT, exit.wait_for(|e| e.is_some())).await;
        let end = ended
            .map_err(|_| format!("VMM still running {EXIT_TIMEOUT:?} after poweroff"))?
            .map_err(|e| e.to_string())?
            .clone();
        match end {
            Some(vpod_vmm::VmExit::Poweroff) => Ok((b, waiter_rss_kib)),
            other => Err(format!("VMM ended {other:?} after poweroff")),
        }
    }
    .await;
    drop(proc);
    // The supervisor removes the jail; give it a moment so the next boot's lease is free.
    tokio::time::sleep(CHILD_CHECK).await;
    let (b, waiter_rss_kib) = res?;
    Ok(ProcessBoot {
        boot: b,
        waiter_rss_kib,
        spawn_to_started_ms: report.spawn_to_started.as_secs_f64() * 1e3,
        jail_setup_ms: report.jail_setup.as_secs_f64() * 1e3,
        process_to_started_ms: report.process_to_started.as_secs_f64() * 1e3,
        uid: report.uid,
    })
}

/// The host's own VMM process starts, by how they are jailed.
#[derive(Debug, Default)]
pub struct HostStarts {
    /// Jailed, its cgroup under the default parent.
    pub jailed: Vec<ProcessBoot>,
    /// Jailed without a cgroup of its own: the jail's cost apart from the cgroup's (a v1 host
    /// moves the VMM into its cgroup after the fork, which waits for an RCU grace period; a v2
    /// host clones it straight in).
    pub jailed_no_cgroup: Vec<ProcessBoot>,
    /// Not jailed.
    pub plain: Vec<ProcessBoot>,
}

/// On this host's own /dev/kvm (kvm_pvm runs VMM setup, not a stock guest's user space): VMM
/// process start until "started", jailed (with and without a cgroup) or not, `runs` times
/// each, interleaved. The VM is stopped right after it started.
pub fn host_starts(f: &Files, runs: usize) -> HostStarts {
    let dir = std::env::temp_dir().join(format!("vpod-bench-jail-{}", std::process::id()));
    let mut out = HostStarts::default();
    for i in 0..runs {
        for mode in 0..3 {
            let name = format!("host-{mode}-{i}");
            let Ok((_, vsock_dir)) = pod_dirs(&dir, &name) else {
                continue;
            };
            let mut vm = VmConfig::new(&f.kernel);
            vm.initrd = Some(f.initrd.clone());
            vm.mem_mib = MEM_MIB;
            let mut cfg = process_config(f, mode < 2);
            if mode == 1 {
                cfg.cgroup_parent = None;
            }
            match start(&cfg, &dir, &name, vm, vsock_dir, &[]) {
                Ok((proc, _)) => {
                    let r = proc.report();
                    let setup = proc
                        .metrics()
                        .ok()
                        .and_then(|m| m.start_to_first_kvm_run_us);
                    let b = ProcessBoot {
                        boot: super::Boot {
                            setup_ms: setup.map(|us| us as f64 / 1e3),
                            ..Default::default()
                        },
                        spawn_to_started_ms: r.spawn_to_started.as_secs_f64() * 1e3,
                        jail_setup_ms: r.jail_setup.as_secs_f64() * 1e3,
                        process_to_started_ms: r.process_to_started.as_secs_f64() * 1e3,
                        uid: r.uid,
                        waiter_rss_kib: 0,
                    };
                    let exit = proc.exit();
                    drop(proc);
                    // The next start waits until this VMM is reaped and its jail removed.
                    let deadline = Instant::now() + EXIT_TIMEOUT;
                    while exit.borrow().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    match mode {
                        0 => out.jailed.push(b),
                        1 => out.jailed_no_cgroup.push(b),
                        _ => out.plain.push(b),
                    }
                }
                Err(e) => eprintln!("bench boot: host VMM process start ({name}): {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The jail's table (stdout) and its JSON: in-VM boots through the VMM process jailed and not,
/// and the host's own starts.
pub fn report(
    vm: (&[ProcessBoot], &[ProcessBoot]),
    host: &HostStarts,
    qemu_p50_ms: Option<f64>,
) -> serde_json::Value {
    use vpod_benches::{row, stats_row, Stats};
    let col = |bs: &[ProcessBoot], f: &dyn Fn(&ProcessBoot) -> Option<f64>| -> Vec<f64> {
        bs.iter().filter_map(f).collect()
    };
    let series = |label: &str, bs: &[ProcessBoot]| {
        row(&[
            label.into(),
            "min".into(),
            "p50".into(),
            "p90".into(),
            "max".into(),
        ]);
        let s = |name: &str, f: &dyn Fn(&ProcessBoot) -> Option<f64>| {
            (name.to_string(), stats_row(name, &col(bs, f)))
        };
        let rows = [
            s("host: start -> started (ms)", &|b| {
                Some(b.spawn_to_started_ms)
            }),
            s("VMM: jail setup (ms)", &|b| Some(b.jail_setup_ms)),
            s("VMM: start -> started (ms)", &|b| {
                Some(b.process_to_started_ms)
            }),
            s("VMM: start -> 1st KVM_RUN (ms)", &|b| b.boot.setup_ms),
            s("total: start -> READY (ms)", &|b| {
                Some(b.boot.ready_ms).filter(|v| *v > 0.0)
            }),
            s("RSS beyond guest mem (KiB)", &|b| {
                Some((b.boot.rss_kib - b.boot.guest_rss_kib) as f64).filter(|_| b.boot.rss_kib > 0)
            }),
        ];
        rows.into_iter()
            .map(|(k, v)| (k, serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let p50 = |bs: &[ProcessBoot], f: &dyn Fn(&ProcessBoot) -> Option<f64>| {
        Stats::of(&col(bs, f)).map(|s| s.p50)
    };
    let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    let first_run = |b: &ProcessBoot| b.boot.setup_ms;
    let started = |b: &ProcessBoot| Some(b.spawn_to_started_ms);

    println!(
        "\nthe jail's stage: the VMM process through vpod-sandbox's VmProcess, jailed and not"
    );
    let vm_jailed = series("in the VM, jailed", vm.0);
    let vm_plain = series("in the VM, not jailed", vm.1);
    let host_jailed = series("host, jailed", &host.jailed);
    let host_no_cg = series("host, jailed, no cgroup", &host.jailed_no_cgroup);
    let host_plain = series("host, not jailed", &host.plain);
    let vm_cost = diff(p50(vm.0, &first_run), p50(vm.1, &first_run));
    let host_cost = diff(p50(&host.jailed, &started), p50(&host.plain, &started));
    let host_cost_no_cg = diff(
        p50(&host.jailed_no_cgroup, &started),
        p50(&host.plain, &started),
    );
    let cgroup_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let waiter = p50(vm.0, &|b| Some(b.waiter_rss_kib as f64));
    let jailed_ready = p50(vm.0, &|b| Some(b.boot.ready_ms));
    let ratio = match (jailed_ready, qemu_p50_ms) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let beyond = p50(vm.0, &|b| {
        Some((b.boot.rss_kib - b.boot.guest_rss_kib) as f64)
    });
    let show = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2} {unit}"));
    println!(
        "jail cost p50: host {} (start -> started; target <= 5 ms; this host's cgroups are v{}), \
         {} without the cgroup; test bed {} (start -> 1st KVM_RUN)",
        show(host_cost, "ms"),
        if cgroup_v2 { 2 } else { 1 },
        show(host_cost_no_cg, "ms"),
        show(vm_cost, "ms")
    );
    println!("jail's waiter RSS p50: {}", show(waiter, "KiB"));
    println!(
        "jailed boot-to-agent / QEMU p50: {} (target <= 0.75); jailed VMM RSS beyond guest p50: {} (target <= 4096 KiB)",
        show(ratio, ""),
        show(beyond, "KiB")
    );
    serde_json::json!({
        "vm_jailed": { "stats": vm_jailed, "boots": vm.0 },
        "vm_not_jailed": { "stats": vm_plain, "boots": vm.1 },
        "host_jailed": { "stats": host_jailed, "starts": host.jailed },
        "host_jailed_no_cgroup": { "stats": host_no_cg, "starts": host.jailed_no_cgroup },
        "host_not_jailed": { "stats": host_plain, "starts": host.plain },
        "host_cgroup_version": if cgroup_v2 { 2 } else { 1 },
        "jail_cost_p50_ms": {
            "host_start_to_started": host_cost,
            "host_start_to_started_no_cgroup": host_cost_no_cg,
            "vm_start_to_first_kvm_run": vm_cost,
        },
        "jail_waiter_rss_kib_p50": waiter,
        "jailed_ready_ratio_to_qemu_p50": ratio,
        "jailed_rss_beyond_guest_kib_p50": beyond,
    })
}
