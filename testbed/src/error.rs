//! What can go wrong in the test bed itself, and the exit status each failure gives.

/// Exit status for failures of the test bed itself (not of the command).
pub const EXIT_TESTBED_ERROR: i32 = 125;
/// Exit status when the command ran out of time (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;

/// Failures of the test bed itself (the command's own failure is its exit status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Before L1 starts: no command, a missing share, the L1 build script failed.
    #[error("setup: {0}")]
    Setup(String),
    /// QEMU could not be started.
    #[error("starting qemu: {0}")]
    Spawn(#[source] std::io::Error),
    /// L1's init never spoke, on every attempt.
    #[error("L1 did not boot (no init after {secs} s, {attempts} attempt(s)); console log: {log}")]
    NoBoot {
        /// How long the last attempt waited.
        secs: u64,
        /// Boots tried.
        attempts: u32,
        /// The console log file.
        log: String,
    },
    /// L1 booted but failed (its init reported an error, or it ended without an exit status).
    #[error("L1 failed: {what}; console log: {log}")]
    L1 {
        /// What went wrong.
        what: String,
        /// The console log file.
        log: String,
    },
    /// The whole run's time ran out.
    #[error("timeout: the command did not finish within {secs} s; L1 killed; console log: {log}")]
    Timeout {
        /// The run's time limit.
        secs: u64,
        /// The console log file.
        log: String,
    },
    /// L1 froze while the command ran: no heartbeat on its console for this long, on every
    /// attempt (a TCG nested-SVM stall, not the command's doing).
    #[error("L1 froze: no heartbeat for {secs} s, {attempts} attempt(s); console log: {log}")]
    Stalled {
        /// How long the console stayed silent.
        secs: u64,
        /// Runs tried.
        attempts: u32,
        /// The console log file.
        log: String,
    },
    /// SIGINT or SIGTERM arrived while the command ran.
    #[error("interrupted; L1 killed; console log: {log}")]
    Interrupted {
        /// The console log file.
        log: String,
    },
    /// The run dir could not be written or read.
    #[error("run dir {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The exit status the CLI returns for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Timeout { .. } => EXIT_TIMEOUT,
            _ => EXIT_TESTBED_ERROR,
        }
    }
}
