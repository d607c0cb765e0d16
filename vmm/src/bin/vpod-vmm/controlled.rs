//! `vpod-vmm --control-fd N`: one pod's VMM process, driven by its host over the control channel
//! (`vpod_vmm::control`). In order: read the launch; join the pod's netns; open every host file
//! the VM needs (kernel, initrd, disks, console, tap); enter the jail (`vpod_jail::enter`: the
//! process forks, this side is PID 1 of its namespaces, unprivileged, in an empty root); compile
//! the seccomp lists; build the VM, each thread installing its list before it runs; answer
//! `Started`; then serve requests until the VM ends, answer `Exited` and exit.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpod_jail::seccomp::{Filters, Mode};
use vpod_vmm::control::{Control, HostMessage, Launch, SeccompMode, VmmMessage};
use vpod_vmm::{HostFiles, RunningVm, StartOptions, ThreadFilters, Vmm};

use crate::{block_stop_signals, exit_code};

/// Runs the VMM of the host at the other end of `fd`.
pub fn run(fd: RawFd, started: Instant) -> ExitCode {
    // SAFETY: the host passed `fd` as this process's control socket; nothing else owns it.
    let ctl = unsafe { Control::from_raw_fd(fd) };
    let launch = match ctl.recv::<HostMessage>() {
        Ok((HostMessage::Launch(l), _)) => *l,
        Ok((other, _)) => return fail(&ctl, format!("expected Launch first, got {other:?}")),
        Err(e) => return fail(&ctl, format!("reading the launch: {e}")),
    };
    let sigset = block_stop_signals();
    let (vm, main_filter, jail_setup) = match start(&ctl, &launch, started) {
        Ok(s) => s,
        Err(e) => return fail(&ctl, e),
    };
    let vm = Arc::new(vm);

    // Every thread exists before the main thread's own filter goes on (its list has no clone).
    let stopper = vm.stop_handle();
    let filter = main_filter.clone();
    let signals = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(vpod_vmm::THREAD_STACK_SIZE)
        .spawn(move || {
            if vpod_vmm::threads::apply_filter(filter.as_ref()).is_err() {
                stopper.stop();
                return;
            }
            let mut sig: libc::c_int = 0;
            // SAFETY: `sigset` is initialised and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                stopper.stop();
            }
        });
    let waiter = {
        let vm = vm.clone();
        let filter = main_filter.clone();
        let ctl = match ctl.try_clone() {
            Ok(c) => c,
            Err(e) => return fail(&ctl, format!("cloning the control socket: {e}")),
        };
        std::thread::Builder::new()
            .name("vm-wait".into())
            .stack_size(vpod_vmm::THREAD_STACK_SIZE)
            .spawn(move || {
                let applied = vpod_vmm::threads::apply_filter(filter.as_ref());
                if let Err(e) = applied {
                    vm.stop();
                    eprintln!("vpod-vmm: installing the waiter's seccomp filter: {e}");
                }
                let exit = vm.wait();
                let _ = ctl.send(
                    &VmmMessage::Exited {
                        exit: exit.clone(),
                        metrics: vm.metrics(),
                    },
                    &[],
                );
                std::process::exit(i32::from(exit_code(&exit)));
            })
    };
    if let Err(e) = signals.and(waiter) {
        vm.stop();
        return fail(&ctl, format!("spawning a VMM thread: {e}"));
    }
    if let Err(e) = vpod_vmm::threads::apply_filter(main_filter.as_ref()) {
        vm.stop();
        return fail(&ctl, format!("installing the main seccomp filter: {e}"));
    }
    let _ = ctl.send(
        &VmmMessage::Started {
            jail_setup_us: jail_setup.as_micros() as u64,
            process_to_started_us: started.elapsed().as_micros() as u64,
            // SAFETY: getpid has no arguments.
            pid_in_jail: unsafe { libc::getpid() } as u32,
        },
        &[],
    );
    serve(&ctl, &vm);
    // The host is gone: nobody will ever ask again, so the VM goes too. The waiter thread exits.
    vm.stop();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Everything up to a running VM: the VM, the main thread's filter, the jail's setup time.
fn start(
    ctl: &Control,
    launch: &Launch,
    started: Instant,
) -> Result<(RunningVm, Option<seccompiler::BpfProgram>, Duration), String> {
    if let Some(ns) = &launch.netns {
        let f = File::open(ns).map_err(|e| format!("netns {}: {e}", ns.display()))?;
        // SAFETY: setns on an fd we own; the kernel checks it is a network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "joining netns {}: {}",
                ns.display(),
                std::io::Error::last_os_error()
            ));
        }
    } else if launch.jail.is_some() {
        // No pod network: an empty netns of its own, so the jailed VMM can't reach the host's
        // interfaces or its abstract unix sockets (they are per network namespace).
        // SAFETY: unshare only changes this (still single-threaded) process's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "a network namespace of its own: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let files = HostFiles::open(&launch.vm).map_err(|e| e.to_string())?;
    let mut jail_setup = Duration::ZERO;
    if let Some(spec) = &launch.jail {
        let mut spec = spec.clone();
        // The netns was joined above; the jail keeps stderr, the channel and the open files.
        spec.netns = None;
        spec.keep_fds = vec![0, 1, 2, ctl.as_raw_fd()];
        spec.keep_fds.extend(files.raw_fds());
        let entered = vpod_jail::enter(&spec).map_err(|e| format!("entering the jail: {e}"))?;
        jail_setup = entered.setup;
    }
    let (threads, main) = match launch.seccomp {
        SeccompMode::Off => (None, None),
        mode => {
            let mode = if mode == SeccompMode::Log {
                Mode::Log
            } else {
                Mode::Enforce
            };
            let f = Filters::compile(mode).map_err(|e| e.to_string())?;
            (
                Some(ThreadFilters {
                    vcpu: f.vcpu,
                    event_loop: f.event_loop,
                }),
                Some(f.main),
            )
        }
    };
    let opts = StartOptions {
        started,
        filters: threads,
    };
    let vm = Vmm::start_with(&launch.vm, files, &opts).map_err(|e| e.to_string())?;
    Ok((vm, main, jail_setup))
}

/// Answers the host's requests until it hangs up (or sends garbage).
fn serve(ctl: &Control, vm: &RunningVm) {
    loop {
        let (msg, fds) = match ctl.recv::<HostMessage>() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("vpod-vmm: control channel: {e}");
                return;
            }
        };
        let answer = match msg {
            HostMessage::Launch(_) => VmmMessage::Refused {
                error: "already launched".into(),
            },
            HostMessage::SwapDisk { index, id } => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(fd), None) => match vm.swap_disk_file(index, fd.into(), id.as_deref()) {
                        Ok(()) => VmmMessage::Done,
                        Err(e) => VmmMessage::Refused {
                            error: e.to_string(),
                        },
                    },
                    _ => VmmMessage::Refused {
                        error: "SwapDisk takes exactly one file descriptor".into(),
                    },
                }
            }
            HostMessage::Metrics => {
                forbidden_syscall_test();
                VmmMessage::Metrics {
                    metrics: vm.metrics(),
                    hotplug: vm.hotplug(),
                }
            }
            HostMessage::RequestHotplug { bytes } => match vm.request_hotplug(bytes) {
                Ok(_) => VmmMessage::Done,
                Err(e) => VmmMessage::Refused {
                    error: e.to_string(),
                },
            },
            HostMessage::Stop => {
                vm.stop();
                continue;
            }
        };
        if ctl.send(&answer, &[]).is_err() {
            return;
        }
    }
}

/// Test builds (feature `forbidden-syscall-test`) only: a syscall no list allows, after every
/// filter is in place, so a test sees the kernel kill the VMM (SIGSYS).
fn forbidden_syscall_test() {
    #[cfg(feature = "forbidden-syscall-test")]
    // SAFETY: PTRACE_TRACEME takes no pointers; the filter kills the process before it runs.
    unsafe {
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
    }
}

fn fail(ctl: &Control, error: String) -> ExitCode {
    eprintln!("vpod-vmm: {error}");
    let _ = ctl.send(&VmmMessage::Failed { error }, &[]);
    ExitCode::from(1)
}
