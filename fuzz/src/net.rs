//! `net`: virtio-net's rx and tx queues under a malicious driver, on a real tap, with the host
//! side sending frames the device must place in rx chains.
//!
//! The tap lives in a network namespace of the fuzzing process's own (gone when it exits):
//! made persistent and up once, then each input's device attaches to it (`Net::new`) and
//! detaches when dropped, which drops whatever was queued. Frames reach it from an AF_PACKET
//! socket opened once (opening one per input costs a synchronize_net, ~15 ms). Without
//! /dev/net/tun or the right to make a namespace (not root), the target does nothing and says
//! so once on stderr.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use vpod_vmm::devices::virtio::net::Net;

use crate::driver::{DriverOp, Fixture, QueueSetup};

const TAP: &str = "vpodfz0";
const MAC: [u8; 6] = [0x02, 0, 0, 0xf0, 0x22, 0x01];

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Driver(DriverOp),
    /// A frame from the wire (Ethernet header included), then the event loop runs.
    HostFrame(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub features: u64,
    pub queues: [QueueSetup; 2],
    pub ops: Vec<Op>,
}

struct Wire {
    sock: OwnedFd,
    ifindex: i32,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(flags: libc::c_short) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        flags,
        _pad: [0; 22],
    };
    r.name[..TAP.len()].copy_from_slice(TAP.as_bytes());
    r
}

fn setup() -> Result<Wire, String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls on values we own; each result is checked.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(err("unshare(CLONE_NEWNET)"));
        }
        // No IPv6 autoconf chatter on the tap (best effort).
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if tun < 0 {
            return Err(err("open /dev/net/tun"));
        }
        let tun = OwnedFd::from_raw_fd(tun);
        let mut req = ifreq((libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16);
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0 {
            return Err(err("TUNSETIFF"));
        }
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1) < 0 {
            return Err(err("TUNSETPERSIST"));
        }
        drop(tun);
        let sock = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(err("AF_PACKET socket"));
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut up = ifreq(0);
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut up) < 0 {
            return Err(err("SIOCGIFFLAGS"));
        }
        up.flags |= libc::IFF_UP as i16;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &up) < 0 {
            return Err(err("SIOCSIFFLAGS"));
        }
        let name = std::ffi::CString::new(TAP).unwrap();
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(err("if_nametoindex"));
        }
        Ok(Wire { sock, ifindex })
    }
}

fn wire() -> Option<&'static Wire> {
    static WIRE: OnceLock<Option<Wire>> = OnceLock::new();
    WIRE.get_or_init(|| match setup() {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("net fuzz target: no tap ({e}); every input is a no-op");
            None
        }
    })
    .as_ref()
}

impl Wire {
    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = self.ifindex;
        // SAFETY: `frame` and `addr` outlive the call; errors (runts, too big) are the input's.
        unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
        }
    }
}

pub fn run(input: &Input) {
    let Some(wire) = wire() else { return };
    let dev = match Net::new(TAP, Some(MAC)) {
        Ok(dev) => dev,
        Err(e) => panic!("net: attaching to the fuzz tap: {e}"),
    };
    let Some(mut f) = Fixture::new(dev, input.features, &input.queues) else {
        return;
    };
    for op in &input.ops {
        match op {
            Op::Driver(op) => f.apply(op),
            Op::HostFrame(frame) => {
                wire.send(frame);
                f.run();
            }
        }
    }
    f.finish();
}
