//! `testbed`: run a command on a real KVM, inside the test bed's L1 VM when the host's KVM can't run
//! Linux guests.
//!
//! ```text
//! testbed run [--smp N] [--mem MiB] [--timeout S] [--stall-timeout S] [--share DIR]... [--if-needed] [--report F] -- CMD ARGS...
//! testbed probe        # exit 0: host KVM is real (run directly); 1: VM tests need the test bed
//! testbed build        # build/cache L1's boot files, print their dir
//! ```
//! Exit status of `run`: the command's own, 124 on timeout, 125 when the test bed itself failed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vpod_testbed::{probe, run, EXIT_TESTBED_ERROR};

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "Run commands on a real KVM (nested, under QEMU TCG, when needed)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot L1, run CMD in it (same cwd, same environment), return its exit status.
    Run {
        /// L1 vCPUs; 1 by default (two can stall: an IPI to a CPU inside the nested guest).
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// L1 memory in MiB.
        #[arg(long, default_value_t = 3072)]
        mem: u32,
        /// Seconds for the whole run, L1 boot included.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Seconds until L1's init must speak (a hung boot is retried once).
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
        /// Seconds without L1's console heartbeat (every 30 s) after which L1 counts as frozen:
        /// killed, and the command run again once.
        #[arg(long, default_value_t = 240)]
        stall_timeout: u64,
        /// Host dir shared read-write at the same path (repeatable; default: the working dir).
        #[arg(long = "share")]
        shares: Vec<PathBuf>,
        /// Run CMD directly when the host's KVM is real hardware KVM.
        #[arg(long)]
        if_needed: bool,
        /// Keep the run dir (console log, job script) after success too.
        #[arg(long)]
        keep: bool,
        /// Write L1 stage timings as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<OsString>,
    },
    /// Tell whether this host's /dev/kvm runs Linux guests (exit 0) or VM tests need the test bed (exit 1).
    Probe {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Build (or find cached) L1's kernel and initramfs and print their dir.
    Build,
}

extern "C" fn on_signal(sig: libc::c_int) {
    run::INTERRUPTED.store(sig, std::sync::atomic::Ordering::SeqCst);
}

fn exec_direct(argv: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("testbed: can't run {}: {err}", argv[0].to_string_lossy());
    ExitCode::from(127)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Probe { quiet } => {
            let v = probe::probe();
            if !quiet {
                println!("{v}");
            }
            ExitCode::from(if v.is_direct() { 0 } else { 1 })
        }
        Cmd::Build => match vpod_testbed::l1::ensure() {
            Ok(b) => {
                println!("{}", b.kernel.parent().unwrap_or(&b.kernel).display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("testbed: {e}");
                ExitCode::from(EXIT_TESTBED_ERROR as u8)
            }
        },
        Cmd::Run {
            smp,
            mem,
            timeout,
            boot_timeout,
            stall_timeout,
            shares,
            if_needed,
            keep,
            report,
            argv,
        } => {
            if if_needed && probe::probe().is_direct() {
                return exec_direct(&argv);
            }
            // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            let mut opts = match run::RunOptions::new(argv) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("testbed: working directory: {e}");
                    return ExitCode::from(EXIT_TESTBED_ERROR as u8);
                }
            };
            opts.smp = smp;
            opts.mem_mib = mem;
            opts.timeout = Duration::from_secs(timeout);
            opts.boot_timeout = Duration::from_secs(boot_timeout);
            opts.stall_timeout = Duration::from_secs(stall_timeout);
            opts.shares = shares;
            opts.keep = keep;
            match run::run(&opts) {
                Ok(out) => {
                    if let Some(path) = report {
                        let json = serde_json::to_string_pretty(&out.timings).unwrap_or_default();
                        if let Err(e) = std::fs::write(&path, json) {
                            eprintln!("testbed: writing {}: {e}", path.display());
                        }
                    }
                    if keep {
                        eprintln!("testbed: run dir kept: {}", out.run_dir.display());
                    }
                    ExitCode::from(out.status.clamp(0, 255) as u8)
                }
                Err(e) => {
                    eprintln!("testbed: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}
