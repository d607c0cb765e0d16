//! A tap device opened with a virtio-net header on every frame (IFF_VNET_HDR), so the guest's
//! checksum/segmentation offload metadata passes through the kernel unchanged.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The tun driver's ioctl numbers (linux/if_tun.h).
mod ioctls {
    use vmm_sys_util::ioctl_iow_nr;

    const TUNTAP: u32 = b'T' as u32;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);
}
use ioctls::{TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Size of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// TUNSETOFFLOAD flags: what the reader of the tap (we, for the guest) can take.
pub const TUN_F_CSUM: u32 = 0x01;
/// The kernel may hand us TCPv4 segmentation-offload frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// The kernel may hand us TCPv6 segmentation-offload frames.
pub const TUN_F_TSO6: u32 = 0x04;

const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the flags member of its union (the kernel reads 40 bytes on x86_64).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a tap can't be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a name Linux takes for an interface.
    #[error("invalid tap name {0:?} (1-15 bytes, no '/', ':', NUL or whitespace)")]
    InvalidName(String),
    /// Opening the tun control device.
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// Creating or attaching to the interface.
    #[error("TUNSETIFF {name}: {source}")]
    SetIff {
        /// The interface.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// Setting the virtio-net header size.
    #[error("TUNSETVNETHDRSZ on {name}: {source}")]
    SetVnetHdrSize {
        /// The interface.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// Setting the offloads.
    #[error("TUNSETOFFLOAD {flags:#x} on {name}: {source}")]
    SetOffload {
        /// The interface.
        name: String,
        /// The TUN_F_* flags asked for.
        flags: u32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface (non-blocking), frames prefixed with a virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed, which takes CAP_NET_ADMIN) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let valid = !name.is_empty()
            && name.len() < IFNAMSIZ
            && name != "."
            && name != ".."
            && !name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
        if !valid {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;

        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one (same layout and
        // size) and lives across the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `hdr_len` is.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }

        let tap = Self {
            file,
            name: name.to_string(),
        };
        // No offloads until the guest says what it takes.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which partial-checksum / GSO frames the kernel may hand us (TUN_F_* flags).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), flags.into()) };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (virtio-net header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio-net header included).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(TUNSETIFF(), 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ(), 0x4004_54d8);
    }

    #[test]
    fn bad_names_rejected() {
        for name in ["", "a/b", "sixteen-bytes-xx", "a b", "x:1", ".."] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName(_))),
                "{name}"
            );
        }
    }
}
