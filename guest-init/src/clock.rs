//! Guest clock readings in nanoseconds.

use nix::time::{clock_gettime, ClockId};

/// One moment read on both clocks the agent API reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_BOOTTIME: time since the kernel started, counting suspend.
    pub boottime_ns: u64,
    /// CLOCK_REALTIME: Unix time as the guest sees it.
    pub realtime_ns: u64,
}

impl Stamp {
    /// Both clocks, now.
    pub fn now() -> Self {
        Stamp {
            boottime_ns: boottime_ns(),
            realtime_ns: realtime_ns(),
        }
    }

    /// Milliseconds from `earlier` to `self` on CLOCK_BOOTTIME.
    pub fn ms_since(&self, earlier: &Stamp) -> f64 {
        self.boottime_ns.saturating_sub(earlier.boottime_ns) as f64 / 1e6
    }
}

/// CLOCK_BOOTTIME in nanoseconds (counts suspended time; the timeline of every stamp the agent
/// reports).
pub fn boottime_ns() -> u64 {
    clock_ns(ClockId::CLOCK_BOOTTIME)
}

/// CLOCK_REALTIME in nanoseconds (Unix time as the guest sees it).
pub fn realtime_ns() -> u64 {
    clock_ns(ClockId::CLOCK_REALTIME)
}

fn clock_ns(id: ClockId) -> u64 {
    // These clocks always exist on Linux; 0 is an honest "unknown" if not.
    match clock_gettime(id) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance() {
        let a = Stamp::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = Stamp::now();
        assert!(a.boottime_ns > 0 && a.realtime_ns > 0);
        assert!(b.ms_since(&a) >= 2.0, "{a:?} -> {b:?}");
        assert_eq!(a.ms_since(&b), 0.0);
        // Realtime is well past 2020 on any sane machine.
        assert!(a.realtime_ns > 1_577_836_800_000_000_000);
    }
}
