//! vCPU threads: configure registers, then run KVM_RUN and dispatch PIO/MMIO exits to the buses.
//!
//! Teardown: the VMM sets `stop`, then kicks each thread with SIGRTMIN. The signal interrupts a
//! running KVM_RUN (EINTR); if it lands just before KVM_RUN, the handler has set the thread's
//! `kvm_run.immediate_exit`, so the next KVM_RUN returns at once instead of entering the guest.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{cpuid, msr, pvh::BootInfo, regs};
use crate::devices::bus::Bus;
use crate::devices::virtio::GuestMemory;
use crate::exit::{ExitEvent, ExitSignal};
use crate::metrics::{read_vcpu_stats, ExitKind, VmCounters};

/// Why a vCPU could not be set up or started (the `u8` is its index).
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Setting its CPUID.
    #[error("vCPU {0}: {1}")]
    Cpuid(u8, #[source] cpuid::CpuidError),
    /// Setting its MSRs.
    #[error("vCPU {0}: {1}")]
    Msr(u8, #[source] msr::MsrError),
    /// Setting its registers.
    #[error("vCPU {0}: {1}")]
    Regs(u8, #[source] regs::RegsError),
    /// A KVM call (which one, its error).
    #[error("vCPU {0}: {1}: {2}")]
    Kvm(u8, &'static str, #[source] kvm_ioctls::Error),
    /// KVM took fewer boot MSRs (taken, given) than we set.
    #[error("vCPU {0}: only {1} of {2} boot MSRs accepted")]
    MsrCount(u8, usize, usize),
    /// The kick signal's handler.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// Its thread.
    #[error("spawning vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
}

const INTERNAL_ERROR: &str = "KVM_EXIT_INTERNAL_ERROR";

thread_local! {
    /// This thread's kvm_run mapping, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with`: never panic inside a signal handler (TLS may be gone during thread exit).
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mmap, set while the VcpuFd is alive and
            // cleared before it is dropped; a volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), kick_handler));
    result.map_err(VcpuError::Signal)
}

/// One vCPU before its thread starts: its KVM fd and what its exits go to.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    stop: Arc<AtomicBool>,
    counters: Arc<VmCounters>,
    filter: Option<seccompiler::BpfProgram>,
}

/// What every vCPU shares: the buses its exits reach, the VM's exit signal, the stop flag and
/// the counters.
#[derive(Debug)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where terminal events (reset, shutdown, errors) go.
    pub exit: Arc<ExitSignal>,
    /// Set at teardown: the vCPU leaves its run loop.
    pub stop: Arc<AtomicBool>,
    /// Exit counters.
    pub counters: Arc<VmCounters>,
    /// The seccomp filter each vCPU thread installs before its first KVM_RUN.
    pub filter: Option<seccompiler::BpfProgram>,
}

impl Vcpu {
    /// vCPU `index` on `fd`.
    pub fn new(fd: VcpuFd, index: u8, ctx: &VcpuContext) -> Self {
        Self {
            fd,
            index,
            pio: ctx.pio.clone(),
            mmio: ctx.mmio.clone(),
            exit: ctx.exit.clone(),
            stop: ctx.stop.clone(),
            counters: ctx.counters.clone(),
            filter: ctx.filter.clone(),
        }
    }

    /// CPUID, MSRs, FPU, LAPIC; the boot vCPU (0) also gets the PVH entry registers. Other vCPUs
    /// wait for INIT/SIPI from the guest (KVM's default MP state for APs).
    pub fn configure(
        &self,
        mem: &GuestMemory,
        supported_cpuid: &kvm_bindings::CpuId,
        caps: cpuid::KvmCaps,
        count: u8,
        boot: &BootInfo,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let cpuid =
            cpuid::for_vcpu(supported_cpuid, i, count, caps).map_err(|e| VcpuError::Cpuid(i, e))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm(i, "KVM_SET_CPUID2", e))?;
        let msrs = msr::boot_msrs().map_err(|e| VcpuError::Msr(i, e))?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(|e| VcpuError::Kvm(i, "KVM_SET_MSRS", e))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::MsrCount(i, set, msrs.as_slice().len()));
        }
        regs::setup_fpu(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        regs::setup_lapic(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        if i == 0 {
            regs::setup_regs(&self.fd, boot.entry.0, boot.start_info.0)
                .map_err(|e| VcpuError::Regs(i, e))?;
            regs::setup_sregs(&self.fd, mem).map_err(|e| VcpuError::Regs(i, e))?;
        }
        Ok(())
    }

    /// Runs the vCPU on its own thread until the VM stops.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(crate::threads::THREAD_STACK_SIZE)
            .spawn(move || self.run())
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle { thread })
    }

    fn run(mut self) {
        // Before the guest runs a single instruction on this thread.
        if let Err(e) = crate::threads::apply_filter(self.filter.take().as_ref()) {
            self.exit.signal(ExitEvent::Error(format!(
                "vCPU {}: installing its seccomp filter: {e}",
                self.index
            )));
            return;
        }
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        self.counters.mark_first_run();
        while !self.stop.load(Ordering::SeqCst) {
            if let Some(mut event) = self.run_once() {
                if event == ExitEvent::Error(INTERNAL_ERROR.into()) {
                    let details = self.internal_error_details();
                    event = ExitEvent::Error(format!(
                        "vCPU {}: {INTERNAL_ERROR} ({details})",
                        self.index
                    ));
                }
                self.exit.signal(event);
                break;
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        self.counters.add_kvm_stats(read_vcpu_stats(&self.fd));
        // Dropping `self` closes the vCPU fd and unmaps kvm_run.
    }

    /// One KVM_RUN; returns a terminal event if the VM must end.
    fn run_once(&mut self) -> Option<ExitEvent> {
        let index = self.index;
        let counters = &self.counters;
        let (pio, mmio) = (&self.pio, &self.mmio);
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    counters.count(ExitKind::IoIn);
                    if !pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    counters.count(ExitKind::IoOut);
                    pio.write(u64::from(port), data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    counters.count(ExitKind::MmioRead);
                    if !mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    counters.count(ExitKind::MmioWrite);
                    mmio.write(addr, data);
                    None
                }
                VcpuExit::Hlt => {
                    // Only reachable without an in-kernel LAPIC; nothing to do but run again.
                    counters.count(ExitKind::Hlt);
                    None
                }
                VcpuExit::Shutdown => {
                    counters.count(ExitKind::Shutdown);
                    Some(ExitEvent::Shutdown)
                }
                VcpuExit::SystemEvent(kind, _) => {
                    counters.count(ExitKind::SystemEvent);
                    match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(ExitEvent::Reset),
                        _ => Some(ExitEvent::Shutdown),
                    }
                }
                VcpuExit::Intr => {
                    counters.count(ExitKind::Intr);
                    None
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    counters.count(ExitKind::FailEntry);
                    Some(ExitEvent::Error(format!(
                        "vCPU {index}: KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
                    )))
                }
                VcpuExit::InternalError => {
                    counters.count(ExitKind::InternalError);
                    // Details need the vCPU fd, borrowed by `exit` here: filled in by `run`.
                    Some(ExitEvent::Error(INTERNAL_ERROR.into()))
                }
                other => {
                    counters.count(ExitKind::Other);
                    Some(ExitEvent::Error(format!(
                        "vCPU {index}: unexpected KVM exit {other:?}"
                    )))
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked (or immediate_exit was set): clear it and let the loop check `stop`.
                self.fd.set_kvm_immediate_exit(0);
                counters.count(ExitKind::Intr);
                None
            }
            Err(e) => Some(ExitEvent::Error(format!("vCPU {index}: KVM_RUN: {e}"))),
        }
    }
}

impl Vcpu {
    /// Suberror, its data words and where the guest was: enough to tell an emulation failure apart.
    fn internal_error_details(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the union for a KVM_EXIT_INTERNAL_ERROR exit.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..n]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let (cr0, efer) = self
            .fd
            .get_sregs()
            .map(|s| (s.cr0, s.efer))
            .unwrap_or((0, 0));
        format!(
            "suberror {}, data [{}], rip {rip:#x}, cr0 {cr0:#x}, efer {efer:#x}",
            internal.suberror,
            data.join(", ")
        )
    }
}

/// A running vCPU's thread.
#[derive(Debug)]
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN; the caller has set `stop` first.
    pub fn kick(&self) {
        if !self.thread.is_finished() {
            let _ = self.thread.kill(kick_signal());
        }
    }

    /// Whether the thread returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}
