//! The agent's own log: a bounded in-memory ring that the `Logs` RPC reads
//! and follows, echoed to the console above a level.
//!
//! PID 1's stdout/stderr is the serial console, where every byte costs the
//! VMM an exit: only notices and worse go there by default.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use tokio::sync::broadcast;
use vpod_agent_api::pb::{LogEntry, LogSource};

use crate::clock::boottime_ns;

/// syslog severities used by the agent.
pub const LEVEL_ERR: u32 = 3;
/// syslog warning.
pub const LEVEL_WARNING: u32 = 4;
/// syslog notice.
pub const LEVEL_NOTICE: u32 = 5;
/// syslog info.
pub const LEVEL_INFO: u32 = 6;
/// syslog debug.
pub const LEVEL_DEBUG: u32 = 7;

/// Lines kept for `Logs` without follow.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Lines a slow follower may fall behind before it sees a gap.
const FOLLOW_BUFFER: usize = 256;

/// The agent's own log: a ring of recent lines for `Logs`, a broadcast for followers, and the
/// console for the lines at or more severe than its console level.
#[derive(Debug)]
pub struct AgentLog {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<LogEntry>,
    console_level: Mutex<u32>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogEntry>,
    capacity: usize,
    next_seq: u64,
}

impl AgentLog {
    /// A log keeping `capacity` lines and echoing lines of `console_level`
    /// or more severe (lower number) to stderr.
    pub fn new(capacity: usize, console_level: u32) -> Self {
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        AgentLog {
            ring: Mutex::new(Ring {
                lines: VecDeque::with_capacity(capacity.min(64)),
                capacity: capacity.max(1),
                next_seq: 0,
            }),
            tx,
            console_level: Mutex::new(console_level),
        }
    }

    /// Lines at or more severe than `level` are also printed to the console.
    pub fn set_console_level(&self, level: u32) {
        *lock(&self.console_level) = level;
    }

    /// Records `message` at syslog `level`.
    pub fn log(&self, level: u32, message: impl Into<String>) {
        let message = message.into();
        if level <= *lock(&self.console_level) {
            // The console may be gone or full; the ring still has the line.
            let _ = writeln!(std::io::stderr(), "vpod-init: {message}");
        }
        let mut ring = lock(&self.ring);
        let entry = LogEntry {
            source: LogSource::Agent as i32,
            level,
            seq: ring.next_seq,
            boottime_ns: boottime_ns(),
            message,
        };
        ring.next_seq += 1;
        if ring.lines.len() == ring.capacity {
            ring.lines.pop_front();
        }
        ring.lines.push_back(entry.clone());
        // Sent under the ring lock so followers see lines in seq order and
        // `snapshot_and_subscribe` neither misses nor repeats one. No
        // receiver is not an error.
        let _ = self.tx.send(entry);
    }

    /// Records at [`LEVEL_ERR`].
    pub fn error(&self, message: impl Into<String>) {
        self.log(LEVEL_ERR, message)
    }

    /// Records at [`LEVEL_WARNING`].
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LEVEL_WARNING, message)
    }

    /// Records at [`LEVEL_NOTICE`].
    pub fn notice(&self, message: impl Into<String>) {
        self.log(LEVEL_NOTICE, message)
    }

    /// Records at [`LEVEL_INFO`].
    pub fn info(&self, message: impl Into<String>) {
        self.log(LEVEL_INFO, message)
    }

    /// Records at [`LEVEL_DEBUG`].
    pub fn debug(&self, message: impl Into<String>) {
        self.log(LEVEL_DEBUG, message)
    }

    /// The lines kept now.
    pub fn snapshot(&self) -> Vec<LogEntry> {
        lock(&self.ring).lines.iter().cloned().collect()
    }

    /// The lines kept now, and a receiver for every line logged after them.
    pub fn snapshot_and_subscribe(&self) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let ring = lock(&self.ring);
        let rx = self.tx.subscribe();
        (ring.lines.iter().cloned().collect(), rx)
    }
}

/// Locks, ignoring poison: a panic elsewhere must not silence the log.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_last_lines_with_seq() {
        let log = AgentLog::new(3, 0);
        for i in 0..5 {
            log.info(format!("line {i}"));
        }
        let lines = log.snapshot();
        let got: Vec<_> = lines.iter().map(|e| (e.seq, e.message.as_str())).collect();
        assert_eq!(got, vec![(2, "line 2"), (3, "line 3"), (4, "line 4")]);
        assert!(lines
            .iter()
            .all(|e| e.level == LEVEL_INFO && e.source == LogSource::Agent as i32));
        assert!(lines
            .windows(2)
            .all(|w| w[0].boottime_ns <= w[1].boottime_ns));
    }

    #[test]
    fn subscriber_gets_only_new_lines() {
        let log = AgentLog::new(10, 0);
        log.warn("old");
        let (backlog, mut rx) = log.snapshot_and_subscribe();
        log.error("new");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].message, "old");
        let e = rx.try_recv().unwrap();
        assert_eq!((e.seq, e.level, e.message.as_str()), (1, LEVEL_ERR, "new"));
        assert!(rx.try_recv().is_err());
    }
}
