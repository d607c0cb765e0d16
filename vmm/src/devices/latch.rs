//! Rate-limiting of logs a guest can trigger: what a guest does wrong (unknown registers, bad
//! widths, invalid status transitions, accesses where no device is) is worth one warning per
//! device and kind of misuse, not one per access; a guest looping over a bad access must not be
//! able to flood the host's log. Later occurrences are logged at debug level.

use std::sync::atomic::{AtomicU32, Ordering};

/// One bit per kind of misuse (kinds are small integers below 32) that was already warned about.
#[derive(Debug, Default)]
pub struct WarnLatch(AtomicU32);

impl WarnLatch {
    /// Nothing warned about yet.
    pub const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// True the first time `kind` is seen (then warn), false afterwards (then debug).
    pub fn first(&self, kind: u32) -> bool {
        let bit = 1u32 << (kind % 32);
        self.0.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

/// `latched_warn!(latch, kind, "format", args...)`: `tracing::warn!` the first time `kind` is
/// seen on `latch`, `tracing::debug!` afterwards.
macro_rules! latched_warn {
    ($latch:expr, $kind:expr, $($arg:tt)+) => {
        if $latch.first($kind as u32) {
            tracing::warn!($($arg)+);
        } else {
            tracing::debug!($($arg)+);
        }
    };
}
// A path for the macro (`crate::devices::latch::latched_warn`) instead of the crate root.
pub(crate) use latched_warn;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn first_per_kind_only() {
        let l = WarnLatch::new();
        assert!(l.first(0));
        assert!(!l.first(0));
        assert!(l.first(3));
        assert!(!l.first(3));
        assert!(!l.first(0));
        let other = WarnLatch::new();
        assert!(other.first(0), "latches are per device");
    }

    thread_local! {
        static LOGS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Writes log lines into the buffer of the thread that logs.
    struct ThreadBuf;
    impl Write for ThreadBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            LOGS.with(|l| l.borrow_mut().extend_from_slice(b));
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Log lines emitted on this thread while `f` runs (debug level and up). One global
    /// subscriber for the whole test binary: per-test scoped subscribers race with tests on
    /// other threads over tracing's per-callsite interest cache.
    pub(crate) fn captured_logs(f: impl FnOnce()) -> String {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let sub = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| ThreadBuf)
                .finish();
            tracing::subscriber::set_global_default(sub).unwrap();
        });
        LOGS.with(|l| l.borrow_mut().clear());
        f();
        let bytes = LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()));
        String::from_utf8(bytes).unwrap()
    }

    /// (WARN lines, DEBUG lines) containing `needle`.
    pub(crate) fn count(logs: &str, needle: &str) -> (usize, usize) {
        let lines = || logs.lines().filter(|l| l.contains(needle));
        (
            lines().filter(|l| l.contains(" WARN ")).count(),
            lines().filter(|l| l.contains("DEBUG")).count(),
        )
    }

    #[test]
    fn macro_warns_once_then_debugs() {
        let l = WarnLatch::new();
        let logs = captured_logs(|| {
            for i in 0..5 {
                latched_warn!(l, 1u32, "misuse number {i}");
            }
        });
        assert_eq!(count(&logs, "misuse number"), (1, 4), "{logs}");
    }
}
