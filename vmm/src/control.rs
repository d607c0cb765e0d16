//! The control channel between a host and a `vpod-vmm` process it started (one per pod): a
//! `SOCK_SEQPACKET` socket pair, one JSON message per packet, file descriptors passed with
//! `SCM_RIGHTS` (a disk image to swap in is opened by the host and handed over, so the jailed VMM
//! never needs to see the host's file tree).
//!
//! ```text
//! host                                   vpod-vmm --control-fd N
//!  ── Launch {vm, jail, netns, ..} ──►   open kernel/initrd/disks/console/tap, jail, build
//!  ◄── Started {jail_setup_us} ───────   (or Failed {error}, then exit 1)
//!  ── SwapDisk {index, id} + fd ─────►
//!  ◄── Done / Refused {error} ────────
//!  ── Metrics ───────────────────────►
//!  ◄── Metrics {metrics} ─────────────
//!  ── Stop ──────────────────────────►
//!  ◄── Exited {exit, metrics} ────────   (any time the VM ends; then the process exits)
//! ```
//!
//! Requests are answered in order, one at a time; [`VmmMessage::Exited`] may come between a
//! request and its answer (the host then gets no answer: the socket closes). Packets are at most
//! [`MAX_MESSAGE`] bytes and carry at most [`MAX_FDS`] descriptors; anything else is refused.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::exit::VmExit;
use crate::metrics::VmMetrics;

/// The largest packet either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors one packet carries.
pub const MAX_FDS: usize = 4;

/// What the jailed VMM's seccomp filters do with a syscall off their lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the VMM (SIGSYS). The default.
    #[default]
    Enforce,
    /// Allow it and have the kernel log it (test beds: to read what a list lacks).
    Log,
    /// No filters (debugging only).
    Off,
}

/// How the host wants the VM started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The VM. Its kernel, initrd, disks and console file are host paths, opened before the jail
    /// is entered; its vsock socket path is a path inside the jail (bound after it).
    pub vm: VmConfig,
    /// The jail to enter once the host files are open (`None`: stay as started, unjailed).
    pub jail: Option<vpod_jail::JailSpec>,
    /// A network namespace to join before the tap is opened (the tap is then made there).
    pub netns: Option<PathBuf>,
    /// The seccomp filters' mode.
    #[serde(default)]
    pub seccomp: SeccompMode,
}

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostMessage {
    /// The first message: start the VM.
    Launch(Box<Launch>),
    /// Back disk `index` with the file passed along (one fd), answering GET_ID with `id`.
    SwapDisk {
        /// The disk slot (config order).
        index: usize,
        /// The new GET_ID answer.
        id: Option<String>,
    },
    /// The counters so far.
    Metrics,
    /// Ask the guest to plug `bytes` of hotplug memory in all ([`crate::RunningVm::request_hotplug`]).
    RequestHotplug {
        /// The total asked, beyond the boot RAM.
        bytes: u64,
    },
    /// Stop the VM (the answer is [`VmmMessage::Exited`]).
    Stop,
}

/// What the VMM tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VmmMessage {
    /// The VM runs (jailed, filters on, vCPUs started).
    Started {
        /// Microseconds the jail took to enter (0 unjailed).
        jail_setup_us: u64,
        /// Microseconds from process start to the answer.
        process_to_started_us: u64,
        /// The VMM's pid in the host's PID namespace is the host's child; this is the jailed
        /// process's own pid (1 in its PID namespace).
        pid_in_jail: u32,
    },
    /// The launch failed; the process exits next.
    Failed {
        /// What went wrong, with context.
        error: String,
    },
    /// A request was done.
    Done,
    /// A request was refused.
    Refused {
        /// Why.
        error: String,
    },
    /// The answer to [`HostMessage::Metrics`].
    Metrics {
        /// The counters.
        metrics: VmMetrics,
        /// The hotplug memory's sizes.
        #[serde(default)]
        hotplug: crate::HotplugState,
    },
    /// The VM ended; the process exits next.
    Exited {
        /// How.
        exit: VmExit,
        /// The counters of the whole run.
        metrics: VmMetrics,
    },
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The peer is gone.
    #[error("control socket closed by the peer")]
    Closed,
    /// A packet that is not a message of this protocol.
    #[error("bad control message: {0}")]
    Bad(String),
}

/// One end of the channel.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
}

/// A new connected pair (both ends close-on-exec; the one passed to the VMM is made inheritable
/// by the spawn).
pub fn pair() -> io::Result<(Control, Control)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    Ok((Control { fd: a }, Control { fd: b }))
}

impl Control {
    /// Takes over an inherited descriptor (`vpod-vmm --control-fd N`).
    ///
    /// # Safety
    /// `fd` must be an open `SOCK_SEQPACKET` socket owned by nobody else.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller promises `fd` is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self { fd }
    }

    /// Another handle on the same socket (e.g. one for a reader thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// Sends `msg` with `fds`.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| ControlError::Bad(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(ControlError::Bad(format!(
                "{} bytes, {} fds: over the limits",
                bytes.len(),
                fds.len()
            )));
        }
        let iov = [IoSlice::new(&bytes)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(ControlError::Closed)
                }
                Err(e) => return Err(ControlError::Io(e.into())),
            }
        }
    }

    /// Waits up to `timeout` for a packet (or the peer's hang-up) to be readable.
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: one valid pollfd that lives across the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one message and the descriptors that came with it (blocking).
    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<(T, Vec<OwnedFd>), ControlError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, truncated, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    let mut bad_cmsg = false;
                    for c in m.cmsgs().map_err(|e| ControlError::Io(e.into()))? {
                        match c {
                            ControlMessageOwned::ScmRights(list) => {
                                for fd in list {
                                    // SAFETY: the kernel just installed `fd` in this process.
                                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                            _ => bad_cmsg = true,
                        }
                    }
                    let truncated = m
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
                        || bad_cmsg;
                    break (m.bytes, truncated, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ControlError::Io(e.into())),
            }
        };
        if len == 0 && fds.is_empty() {
            return Err(ControlError::Closed);
        }
        if truncated {
            return Err(ControlError::Bad(
                "packet or descriptors over the limits".into(),
            ));
        }
        let msg = serde_json::from_slice(&buf[..len])
            .map_err(|e| ControlError::Bad(format!("{e} in a {len}-byte packet")))?;
        Ok((msg, fds))
    }
}

impl AsRawFd for Control {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = pair().unwrap();
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(b"disk").unwrap();
        a.send(
            &HostMessage::SwapDisk {
                index: 2,
                id: Some("img".into()),
            },
            &[f.as_raw_fd()],
        )
        .unwrap();
        let (msg, fds): (HostMessage, _) = b.recv().unwrap();
        assert_eq!(
            msg,
            HostMessage::SwapDisk {
                index: 2,
                id: Some("img".into())
            }
        );
        assert_eq!(fds.len(), 1);
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "disk");

        b.send(&VmmMessage::Done, &[]).unwrap();
        let (m, _): (VmmMessage, _) = a.recv().unwrap();
        assert_eq!(m, VmmMessage::Done);
    }

    #[test]
    fn closed_and_garbage_are_errors() {
        let (a, b) = pair().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), b"{not json", MsgFlags::empty()).unwrap();
        assert!(matches!(b.recv::<HostMessage>(), Err(ControlError::Bad(_))));
        drop(a);
        assert!(matches!(b.recv::<HostMessage>(), Err(ControlError::Closed)));
        assert!(matches!(
            b.send(&VmmMessage::Done, &[]),
            Err(ControlError::Closed)
        ));
    }
}
