//! The guest's interfaces as the host's CNI configured the pod's netns:
//! address, netmask, MTU, up, and the default route, with the classic
//! socket ioctls (IPv4, one address per interface; netlink would be
//! needed for more).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use vpod_agent_api::pb::ConfigureNetworkRequest;

/// Why ConfigureNetwork failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A field of the request is not usable.
    #[error("{what} {value:?} is not valid")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// An ioctl on the interface failed.
    #[error("{op} on {ifname}: {source}")]
    Io {
        /// What the agent was doing.
        op: &'static str,
        /// The interface.
        ifname: String,
        /// The failure.
        source: io::Error,
    },
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the bytes of an
    // initialised sockaddr_in are a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetError::Invalid {
            what: "interface name",
            value: name.into(),
        });
    }
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    sock: &OwnedFd,
    op: &'static str,
    nr: libc::Ioctl,
    req: &mut libc::ifreq,
    ifname: &str,
) -> Result<(), NetError> {
    // SAFETY: every request used here reads or writes one ifreq, which
    // `req` is, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), nr, req as *mut libc::ifreq) } < 0 {
        return Err(NetError::Io {
            op,
            ifname: ifname.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn parse(what: &'static str, s: &str) -> Result<Ipv4Addr, NetError> {
    s.parse().map_err(|_| NetError::Invalid {
        what,
        value: s.into(),
    })
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u32) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    })
}

/// Brings the pod's interface up with the request's address, netmask, MTU and default route.
pub fn configure(req: &ConfigureNetworkRequest) -> Result<(), NetError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| NetError::Io {
        op: "socket",
        ifname: String::new(),
        source: e.into(),
    })?;
    for iface in &req.interfaces {
        let name = iface.name.as_str();
        if let Some(a) = iface.addresses.first() {
            let ip = parse("address", &a.address)?;
            if a.prefix_len > 32 {
                return Err(NetError::Invalid {
                    what: "prefix length",
                    value: a.prefix_len.to_string(),
                });
            }
            let mut r = ifreq(name)?;
            r.ifr_ifru.ifru_addr = sockaddr(ip);
            ioctl(&sock, "set address", libc::SIOCSIFADDR, &mut r, name)?;
            let mut r = ifreq(name)?;
            r.ifr_ifru.ifru_netmask = sockaddr(netmask(a.prefix_len));
            ioctl(&sock, "set netmask", libc::SIOCSIFNETMASK, &mut r, name)?;
        }
        if iface.mtu > 0 {
            let mut r = ifreq(name)?;
            r.ifr_ifru.ifru_mtu = iface.mtu as libc::c_int;
            ioctl(&sock, "set mtu", libc::SIOCSIFMTU, &mut r, name)?;
        }
        let mut r = ifreq(name)?;
        ioctl(&sock, "get flags", libc::SIOCGIFFLAGS, &mut r, name)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl(&sock, "set flags", libc::SIOCSIFFLAGS, &mut r, name)?;
    }
    if !req.ipv4_gateway.is_empty() {
        let gw = parse("gateway", &req.ipv4_gateway)?;
        // SAFETY: rtentry is plain old data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: SIOCADDRT reads one rtentry, valid for the call.
        if unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCADDRT,
                &rt as *const libc::rtentry,
            )
        } < 0
        {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(NetError::Io {
                    op: "add default route",
                    ifname: req.ipv4_gateway.clone(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_and_bad_input() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert!(ifreq("").is_err());
        assert!(ifreq("a-very-long-interface-name").is_err());
        assert!(parse("address", "10.0.0").is_err());
    }
}
