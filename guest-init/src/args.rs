//! Command line of vpod-init.
//!
//! As PID 1 the kernel hands init every command-line word it does not know
//! that has no '=' or '.', so unknown words are ignored there; elsewhere
//! (tests, manual runs) they are errors.

use std::ffi::OsString;
use std::path::PathBuf;

use vpod_agent_api::AGENT_VSOCK_PORT;

/// The usage line every argument error ends with.
pub const USAGE: &str =
    "usage: vpod-init [--listen-unix PATH | --vsock-port PORT] [--kmsg PATH] [--proc PATH]";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// virtio-vsock on this port (the guest's normal case).
    Vsock(u32),
    /// A unix socket at this path (tests, runs on the host).
    Unix(PathBuf),
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Where to serve the agent API.
    pub listen: Listen,
    /// The kernel log to read (`/dev/kmsg`).
    pub kmsg: PathBuf,
    /// The proc file system health reads (`/proc`).
    pub proc_root: PathBuf,
    /// Words ignored because we run as PID 1.
    pub ignored: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            listen: Listen::Vsock(AGENT_VSOCK_PORT),
            kmsg: PathBuf::from("/dev/kmsg"),
            proc_root: PathBuf::from("/proc"),
            ignored: Vec::new(),
        }
    }
}

/// A command line [`Args::parse`] refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// An option without its value.
    #[error("{0} needs a value\n{USAGE}")]
    MissingValue(String),
    /// A vsock port that is not a number.
    #[error("invalid vsock port {0:?}\n{USAGE}")]
    BadPort(String),
    /// A word that is not an option (outside PID 1).
    #[error("unknown argument {0:?}\n{USAGE}")]
    Unknown(String),
}

impl Args {
    /// Parses the arguments after `argv[0]`. `lenient` (PID 1) ignores unknown
    /// words instead of failing.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        lenient: bool,
    ) -> Result<Self, ArgsError> {
        let mut out = Args::default();
        let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| ArgsError::MissingValue(name.to_owned()))
            };
            match arg.as_str() {
                "--listen-unix" => out.listen = Listen::Unix(value(&arg)?.into()),
                "--vsock-port" => {
                    let v = value(&arg)?;
                    let port = v.parse().map_err(|_| ArgsError::BadPort(v.clone()))?;
                    out.listen = Listen::Vsock(port);
                }
                "--kmsg" => out.kmsg = value(&arg)?.into(),
                "--proc" => out.proc_root = value(&arg)?.into(),
                _ if lenient => out.ignored.push(arg),
                _ => return Err(ArgsError::Unknown(arg)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str], lenient: bool) -> Result<Args, ArgsError> {
        Args::parse(words.iter().map(OsString::from), lenient)
    }

    #[test]
    fn defaults_to_vsock_1024() {
        let a = parse(&[], false).unwrap();
        assert_eq!(a.listen, Listen::Vsock(1024));
        assert_eq!(a.kmsg, PathBuf::from("/dev/kmsg"));
    }

    #[test]
    fn parses_options() {
        let a = parse(
            &[
                "--listen-unix",
                "/tmp/a.sock",
                "--kmsg",
                "/tmp/k",
                "--proc",
                "/p",
            ],
            false,
        )
        .unwrap();
        assert_eq!(a.listen, Listen::Unix("/tmp/a.sock".into()));
        assert_eq!(a.kmsg, PathBuf::from("/tmp/k"));
        assert_eq!(a.proc_root, PathBuf::from("/p"));
        assert_eq!(
            parse(&["--vsock-port", "5000"], false).unwrap().listen,
            Listen::Vsock(5000)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            parse(&["--vsock-port"], false),
            Err(ArgsError::MissingValue("--vsock-port".into()))
        );
        assert_eq!(
            parse(&["--vsock-port", "x"], false),
            Err(ArgsError::BadPort("x".into()))
        );
        assert_eq!(
            parse(&["--vsock-port", "-1"], false),
            Err(ArgsError::BadPort("-1".into()))
        );
        assert_eq!(
            parse(&["quiet"], false),
            Err(ArgsError::Unknown("quiet".into()))
        );
        let a = parse(&["quiet", "single"], true).unwrap();
        assert_eq!(a.ignored, vec!["quiet", "single"]);
    }
}
