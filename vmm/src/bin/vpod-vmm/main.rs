//! `vpod-vmm`: boot one microVM from the command line, or (`--control-fd N`) as one pod's jailed
//! VMM process driven by its host over a control channel (`controlled.rs`).
//!
//! Exit status: 0 guest poweroff (or stopped by SIGTERM/SIGINT), 1 VMM error, 2 usage error,
//! 3 guest reboot, 4 guest panic.

mod controlled;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vpod_vmm::config::DEFAULT_GUEST_CID;
use vpod_vmm::{Console, DiskConfig, NetConfig, VmConfig, VmExit, Vmm, VsockConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vpod-vmm",
    version,
    about = "Boot a PVH vmlinux in a KVM microVM"
)]
struct Args {
    /// Driven by the host at the other end of this inherited SOCK_SEQPACKET socket (the VM comes
    /// in its Launch message; every other option is ignored).
    #[arg(long, conflicts_with = "kernel")]
    control_fd: Option<i32>,
    /// Uncompressed ELF vmlinux with a PVH entry point.
    #[arg(long, required_unless_present = "control_fd")]
    kernel: Option<PathBuf>,
    /// initramfs (cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command line, appended after the defaults.
    #[arg(long)]
    cmdline: Option<String>,
    /// Keep kernel boot messages (no `quiet`).
    #[arg(long)]
    verbose_kernel: bool,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// MiB the host may plug in later (a virtio-mem device); 0: none.
    #[arg(long, default_value_t = 0)]
    hotplug_mib: u32,
    /// PATH[,ro][,id=ID]; repeatable.
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// Tap interface name.
    #[arg(long)]
    net: Option<String>,
    /// UDS[,cid=N] (guest CID defaults to 3).
    #[arg(long, value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// off, stdout, or a file path.
    #[arg(long, default_value = "stdout", value_parser = parse_console)]
    console: Console,
    /// Largest size in bytes of a console file (the rest is dropped and counted in the metrics).
    #[arg(long, default_value_t = vpod_vmm::config::DEFAULT_CONSOLE_LIMIT)]
    console_limit: u64,
    /// Write metrics JSON here when the VM ends.
    #[arg(long)]
    metrics: Option<PathBuf>,
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty disk path")?;
    let mut disk = DiskConfig {
        path: path.into(),
        read_only: false,
        id: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            None if opt == "rw" => disk.read_only = false,
            Some(("id", id)) => disk.id = Some(id.to_string()),
            _ => {
                return Err(format!(
                    "unknown disk option {opt:?} (expected ro, rw or id=ID)"
                ))
            }
        }
    }
    Ok(disk)
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty vsock socket path")?;
    let mut v = VsockConfig {
        uds_path: path.into(),
        guest_cid: DEFAULT_GUEST_CID,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("cid", n)) => v.guest_cid = n.parse().map_err(|_| format!("bad cid {n:?}"))?,
            _ => return Err(format!("unknown vsock option {opt:?} (expected cid=N)")),
        }
    }
    Ok(v)
}

fn parse_console(s: &str) -> Result<Console, String> {
    Ok(match s {
        "off" => Console::Off,
        "stdout" => Console::Stdout,
        "" => return Err("empty console".into()),
        path => Console::File(path.into()),
    })
}

/// Blocks SIGTERM/SIGINT in this (and every later) thread; a dedicated thread waits for them.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local sigset; pthread_sigmask only changes this
    // thread's mask (inherited by threads spawned later).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Before any thread exists: a thread's own arena trims with an openat its seccomp list
    // doesn't allow (vpod_jail::seccomp::one_arena says why).
    let one_arena = vpod_jail::seccomp::one_arena();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VPOD_VMM_LOG"))
        .with_writer(std::io::stderr)
        // A host relays a jailed VMM's stderr into its own log: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !one_arena {
        tracing::warn!(
            "mallopt(M_ARENA_MAX, 1) failed: a thread's heap trim may be a seccomp kill"
        );
    }

    if let Some(fd) = args.control_fd {
        return controlled::run(fd, started);
    }
    let Some(kernel) = args.kernel else {
        eprintln!("vpod-vmm: --kernel is required");
        return ExitCode::from(2);
    };
    let config = VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        verbose_kernel: args.verbose_kernel,
        vcpus: args.vcpus,
        mem_mib: args.mem_mib,
        hotplug_mib: args.hotplug_mib,
        disks: args.disks,
        net: args.net.map(|tap| NetConfig { tap, mac: None }),
        vsock: args.vsock,
        rng: args.rng,
        console: args.console,
        console_limit: args.console_limit,
    };

    let sigset = block_stop_signals();
    let vm = match Vmm::start_at(config, started) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vpod-vmm: error: {e}");
            return ExitCode::from(1);
        }
    };
    let stopper = vm.stop_handle();
    // Detached: it ends with the process.
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(vpod_vmm::THREAD_STACK_SIZE)
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `sigset` is initialised and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                stopper.stop();
            }
        });

    let outcome = vm.wait();
    if let Some(path) = &args.metrics {
        let json = serde_json::json!({
            "exit": format!("{outcome:?}"),
            "metrics": vm.metrics(),
        });
        if let Err(e) = std::fs::write(path, format!("{json:#}\n")) {
            eprintln!(
                "vpod-vmm: warning: writing metrics to {}: {e}",
                path.display()
            );
        }
    }
    if let VmExit::Error(e) = &outcome {
        eprintln!("vpod-vmm: error: {e}");
    }
    ExitCode::from(exit_code(&outcome))
}

/// The process's exit status for a VM's end (see the module docs).
pub(crate) fn exit_code(exit: &VmExit) -> u8 {
    match exit {
        VmExit::Poweroff | VmExit::Stopped => 0,
        VmExit::Reboot => 3,
        VmExit::Panic => 4,
        VmExit::Error(_) | VmExit::Killed(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_and_vsock_syntax() {
        let d = parse_disk("/a.img,ro,id=root").unwrap();
        assert_eq!(
            (d.path.to_str().unwrap(), d.read_only, d.id.as_deref()),
            ("/a.img", true, Some("root"))
        );
        assert!(parse_disk("/a.img,rx").is_err());
        assert!(parse_disk(",ro").is_err());
        let v = parse_vsock("/tmp/v.sock,cid=7").unwrap();
        assert_eq!(v.guest_cid, 7);
        assert_eq!(parse_vsock("/tmp/v.sock").unwrap().guest_cid, 3);
        assert!(parse_vsock("/tmp/v.sock,cid=x").is_err());
        assert_eq!(parse_console("off").unwrap(), Console::Off);
        assert_eq!(
            parse_console("/tmp/c").unwrap(),
            Console::File("/tmp/c".into())
        );
    }
}
