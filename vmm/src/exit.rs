//! How a VM ends. Devices and vCPUs report events into one [`ExitSignal`]; [`RunningVm::wait`]
//! turns the first terminal event, plus whether the console showed a kernel panic, into a
//! [`VmExit`].
//!
//! [`RunningVm::wait`]: crate::RunningVm::wait

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The outcome of a VM run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmExit {
    /// The guest powered off: its kernel reset the CPU through the reset control register
    /// (0xCF9, the method vpod-init picks for a poweroff), or halted (`reboot(RB_POWER_OFF)`
    /// without ACPI: "reboot: System halted" on the console).
    Poweroff,
    /// The guest rebooted: an i8042 reset (`reboot=k`) without a kernel panic.
    Reboot,
    /// A kernel panic was seen on the serial console, or the guest triple-faulted.
    Panic,
    /// The host asked the VM to stop ([`crate::RunningVm::stop`], SIGTERM in the CLI).
    Stopped,
    /// The VMM failed (KVM error, entry failure, ...).
    Error(String),
    /// The VMM process was killed by this signal (seen by the host that started it): SIGSYS is
    /// its seccomp filter refusing a syscall, SIGKILL an OOM kill or a kill -9.
    Killed(i32),
}

impl VmExit {
    /// Whether the VMM process was killed by its seccomp filter.
    pub fn is_seccomp_kill(&self) -> bool {
        *self == VmExit::Killed(libc::SIGSYS)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Poweroff => f.write_str("the guest powered off"),
            VmExit::Reboot => f.write_str("the guest rebooted"),
            VmExit::Panic => f.write_str("the guest kernel panicked"),
            VmExit::Stopped => f.write_str("stopped by the host"),
            VmExit::Error(e) => write!(f, "VMM error: {e}"),
            VmExit::Killed(s) if *s == libc::SIGSYS => {
                f.write_str("VMM killed by seccomp (SIGSYS: a syscall off its thread's allow-list)")
            }
            VmExit::Killed(s) => write!(f, "VMM killed by signal {s}"),
        }
    }
}

/// A terminal event of the VM's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitEvent {
    /// Reset requested by the guest (i8042 0xFE, KVM_SYSTEM_EVENT_RESET).
    Reset,
    /// RST_CPU written to the reset control register (0xCF9): a vpod guest's poweroff.
    PowerOff,
    /// Triple fault (KVM_EXIT_SHUTDOWN) or KVM_SYSTEM_EVENT_SHUTDOWN/CRASH.
    Shutdown,
    /// Host stop request.
    Stop,
    /// The guest kernel halted or powered down (seen on the serial console): with no ACPI its
    /// CPUs now sit in HLT for ever, so the VMM ends the VM.
    Halted,
    /// The VMM failed.
    Error(String),
}

/// Combines a terminal event with the panic watcher. A CF9 reset is a poweroff even after a
/// panic: vpod-init chose that line, and a panic on the way down (its `reboot(2)` failed, so PID 1
/// exited) ends through the same line.
pub fn decide(event: &ExitEvent, panic_seen: bool) -> VmExit {
    match event {
        ExitEvent::Error(e) => VmExit::Error(e.clone()),
        ExitEvent::Stop => VmExit::Stopped,
        ExitEvent::PowerOff => VmExit::Poweroff,
        _ if panic_seen => VmExit::Panic,
        ExitEvent::Reset => VmExit::Reboot,
        ExitEvent::Halted => VmExit::Poweroff,
        ExitEvent::Shutdown => VmExit::Panic,
    }
}

/// Shared by vCPUs, devices and the waiter. The first terminal event wins.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    panic_seen: AtomicBool,
    event: Mutex<Option<ExitEvent>>,
}

impl ExitSignal {
    /// A signal with no event yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            panic_seen: AtomicBool::new(false),
            event: Mutex::new(None),
        })
    }

    /// Records a terminal event (the first one is kept) and wakes the waiter.
    pub fn signal(&self, event: ExitEvent) {
        let mut slot = self.event.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(event);
        }
        drop(slot);
        // An eventfd write only fails on counter overflow; the waiter is awake by then anyway.
        let _ = self.evt.write(1);
    }

    /// The console showed a kernel panic.
    pub fn set_panic_seen(&self) {
        self.panic_seen.store(true, Ordering::SeqCst);
    }

    /// Whether the console showed a kernel panic.
    pub fn panic_seen(&self) -> bool {
        self.panic_seen.load(Ordering::SeqCst)
    }

    /// The event first signalled, if any.
    pub fn event(&self) -> Option<ExitEvent> {
        self.event.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Readable once an event was signalled (for an event loop).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Blocks until an event was signalled, then decides the outcome.
    pub fn wait(&self) -> VmExit {
        loop {
            if let Some(event) = self.event() {
                return decide(&event, self.panic_seen());
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.evt),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let _ = self.evt.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use ExitEvent::*;
        assert_eq!(decide(&PowerOff, false), VmExit::Poweroff);
        assert_eq!(decide(&PowerOff, true), VmExit::Poweroff);
        assert_eq!(decide(&Reset, false), VmExit::Reboot);
        assert_eq!(decide(&Reset, true), VmExit::Panic);
        assert_eq!(decide(&Shutdown, false), VmExit::Panic);
        assert_eq!(decide(&Halted, false), VmExit::Poweroff);
        assert_eq!(decide(&Halted, true), VmExit::Panic);
        assert_eq!(decide(&Stop, true), VmExit::Stopped);
        assert_eq!(decide(&Error("x".into()), true), VmExit::Error("x".into()));
    }

    #[test]
    fn first_event_wins_and_wait_returns() {
        let s = std::sync::Arc::new(ExitSignal::new().unwrap());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.signal(ExitEvent::PowerOff);
        s.signal(ExitEvent::Shutdown);
        assert_eq!(t.join().unwrap(), VmExit::Poweroff);
        assert_eq!(s.event(), Some(ExitEvent::PowerOff));
    }
}
