//! Net device tests against a real tap (needs root and /dev/net/tun): a fake guest drives the
//! queues, an AF_PACKET socket on the tap interface plays the network.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC};

use super::device::{RXQ_INDEX, TXQ_INDEX};
use super::{Net, NetError, TapError, VNET_HDR_LEN};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::test_utils::Harness;

const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x11, 0x22, 0x33];
/// IEEE "local experimental" ethertype: nothing else on the link uses it.
const ETHERTYPE: u16 = 0x88b5;

fn tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vpt{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An AF_PACKET socket bound to the tap interface (the "wire" side of the tap).
struct Wire {
    fd: OwnedFd,
    ifindex: i32,
}

impl Wire {
    fn open(ifname: &str) -> Self {
        let cname = std::ffi::CString::new(ifname).unwrap();
        // Keep IPv6 autoconf chatter off the test link (best effort).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "1",
        );
        set_link_up(ifname);
        // SAFETY: plain syscalls with checked results; `cname` outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: as above.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = sockaddr_ll(ifindex, proto);
        // SAFETY: `addr` is a valid sockaddr_ll for the duration of the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        Self { fd, ifindex }
    }

    fn send(&self, frame: &[u8]) {
        let addr = sockaddr_ll(self.ifindex, (ETHERTYPE).to_be());
        // SAFETY: `frame` and `addr` are valid for the duration of the call.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            ret,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits (up to 3 s) for a frame with our ethertype and `payload`.
    fn recv_matching(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length during the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let f = &buf[..n as usize];
            if f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes() && f[14..].starts_with(payload)
            {
                return Some(f.to_vec());
            }
        }
        None
    }
}

fn sockaddr_ll(ifindex: i32, proto_be: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto_be;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&MAC);
    addr
}

fn set_link_up(ifname: &str) {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain syscalls on a fresh socket with an ifreq-sized, live argument.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0);
        assert_eq!(libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req), 0);
        req.flags |= libc::IFF_UP as i16;
        assert_eq!(libc::ioctl(s, libc::SIOCSIFFLAGS, &mut req), 0);
        libc::close(s);
    }
}

fn setup() -> (String, Harness<Net>) {
    let name = tap_name();
    let mut net = Net::new(&name, Some(MAC)).unwrap();
    net.set_acked_features(
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM),
    );
    (name, Harness::new(net, 64))
}

/// Makes an rx chain of one writable buffer of `len` bytes available; returns (head, addr).
fn give_rx(h: &mut Harness<Net>, len: u32) -> (u16, u64) {
    let a = h.guest.alloc(len);
    let head = h.guest.add_chain(RXQ_INDEX, &[(a, len, true)]);
    (head, a)
}

/// Used rx buffers holding a frame with our ethertype and `payload` (header stripped off).
fn rx_frames_matching(h: &mut Harness<Net>, addrs: &[(u16, u64)], payload: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (head, len) in h.guest.take_used(RXQ_INDEX) {
        let Some(&(_, addr)) = addrs.iter().find(|(hd, _)| *hd == head) else {
            continue;
        };
        let data = h.guest.read(addr, len as usize);
        if data.len() >= VNET_HDR_LEN + 14
            && data[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETHERTYPE.to_be_bytes()
            && data[VNET_HDR_LEN + 14..].starts_with(payload)
        {
            out.push(data);
        }
    }
    out
}

#[test]
fn features_config_and_errors() {
    let (_name, h) = setup();
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let f = dev.avail_features();
    assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0xaa, 0xbb, 0xcc, 0, 0]);
    let mut cfg = [0xffu8; 2];
    dev.read_config(4, &mut cfg);
    assert_eq!(cfg, [0xbb, 0xcc]);
    drop(dev);

    let no_mac = Net::new(&tap_name(), None).unwrap();
    assert_eq!(no_mac.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert!(matches!(
        Net::new("bad/name", None),
        Err(NetError::Tap(TapError::InvalidName(_)))
    ));
}

#[test]
fn tap_closed_on_drop() {
    let name = tap_name();
    let net = Net::new(&name, None).unwrap();
    let sys = format!("/sys/class/net/{name}");
    assert!(std::path::Path::new(&sys).exists());
    drop(net);
    // A non-persistent tap disappears with its last fd.
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::path::Path::new(&sys).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!std::path::Path::new(&sys).exists());
}

#[test]
fn frames_out_and_in_over_a_real_tap() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);

    // Guest -> wire: header and frame in separate descriptors (gathered).
    let out = frame([0xff; 6], MAC, b"vpod-net-tx");
    let hdr = h.guest.alloc(VNET_HDR_LEN as u32);
    h.guest.write(hdr, &[0u8; VNET_HDR_LEN]);
    let body = h.guest.alloc(out.len() as u32);
    h.guest.write(body, &out);
    h.guest.add_chain(
        TXQ_INDEX,
        &[
            (hdr, VNET_HDR_LEN as u32, false),
            (body, out.len() as u32, false),
        ],
    );
    h.kick(TXQ_INDEX);
    assert_eq!(h.guest.take_used(TXQ_INDEX).len(), 1);
    assert!(h.irq_fired());
    let seen = wire
        .recv_matching(b"vpod-net-tx")
        .expect("frame on the wire");
    assert_eq!(seen, out);
    assert_eq!(h.dev.lock().unwrap().stats().tx_frames, 1);

    // Wire -> guest.
    let bufs: Vec<(u16, u64)> = (0..8).map(|_| give_rx(&mut h, 2048)).collect();
    h.kick(RXQ_INDEX);
    let inbound = frame(MAC, PEER_MAC, b"vpod-net-rx");
    wire.send(&inbound);
    h.run();
    let got = rx_frames_matching(&mut h, &bufs, b"vpod-net-rx");
    assert_eq!(got.len(), 1);
    let hdr = &got[0][..VNET_HDR_LEN];
    // num_buffers = 1, no GSO.
    assert_eq!(&hdr[10..12], &[1, 0]);
    assert_eq!(hdr[1], 0);
    assert_eq!(&got[0][VNET_HDR_LEN..], &inbound[..]);
    assert!(h.irq_fired());
}

#[test]
fn rx_waits_for_buffers_and_drops_frames_that_do_not_fit() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);
    h.run();

    // No rx buffers: the frame waits, and the loop is idle (tap not watched meanwhile).
    // Two frames: one read and waiting, one still queued on the tap.
    wire.send(&frame(MAC, PEER_MAC, b"vpod-wait-1"));
    wire.send(&frame(MAC, PEER_MAC, b"vpod-wait-1"));
    h.run();
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0);

    // A chain too small for any frame: consumed empty, frame dropped. Then a good one.
    let small = give_rx(&mut h, 20);
    h.kick(RXQ_INDEX);
    let used = h.guest.take_used(RXQ_INDEX);
    assert_eq!(used, [(small.0, 0)]);
    assert!(h.dev.lock().unwrap().stats().rx_dropped >= 1);

    let bufs: Vec<(u16, u64)> = (0..8).map(|_| give_rx(&mut h, 2048)).collect();
    h.kick(RXQ_INDEX);
    h.guest.take_used(RXQ_INDEX);
    wire.send(&frame(MAC, PEER_MAC, b"vpod-wait-2"));
    h.run();
    assert_eq!(rx_frames_matching(&mut h, &bufs, b"vpod-wait-2").len(), 1);
}

#[test]
fn bad_rx_chain_is_skipped() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);
    // A read-only rx chain is bad: returned unused, the frame goes to the next chain.
    let ro = h.guest.alloc(2048);
    let ro_head = h.guest.add_chain(RXQ_INDEX, &[(ro, 2048, false)]);
    let good = give_rx(&mut h, 2048);
    h.kick(RXQ_INDEX);
    wire.send(&frame(MAC, PEER_MAC, b"vpod-skip"));
    h.run();
    let used = h.guest.take_used(RXQ_INDEX);
    assert!(used.contains(&(ro_head, 0)), "{used:?}");
    assert!(used.iter().any(|&(head, len)| head == good.0 && len > 0));
    let data = h.guest.read(good.1, 2048);
    assert!(data[VNET_HDR_LEN + 14..].starts_with(b"vpod-skip"));
}

#[test]
fn bad_tx_chains_are_dropped() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);
    let hl = VNET_HDR_LEN as u32;

    // Device-writable descriptor.
    let a = h.guest.alloc(100);
    h.guest.add_chain(TXQ_INDEX, &[(a, 100, true)]);
    // Shorter than the virtio-net header.
    let a = h.guest.alloc(5);
    h.guest.add_chain(TXQ_INDEX, &[(a, 5, false)]);
    // Outside guest memory.
    h.guest
        .add_chain(TXQ_INDEX, &[(0xffff_0000_0000, hl, false)]);
    // Longer than any frame.
    let a = h.guest.alloc(40_000);
    h.guest
        .add_chain(TXQ_INDEX, &[(a, 40_000, false), (a, 40_000, false)]);
    h.kick(TXQ_INDEX);
    assert_eq!(h.guest.take_used(TXQ_INDEX).len(), 4);
    let stats = h.dev.lock().unwrap().stats();
    assert_eq!((stats.tx_dropped, stats.tx_frames), (4, 0));

    // The device still works.
    let out = frame([0xff; 6], MAC, b"vpod-after-bad");
    let a = h.guest.alloc(hl + out.len() as u32);
    h.guest.write(a, &[0u8; VNET_HDR_LEN]);
    h.guest.write(a + u64::from(hl), &out);
    h.guest
        .add_chain(TXQ_INDEX, &[(a, hl + out.len() as u32, false)]);
    h.kick(TXQ_INDEX);
    assert!(wire.recv_matching(b"vpod-after-bad").is_some());
}

#[test]
fn broken_tx_ring_needs_reset_and_stops_the_device() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);
    let bufs: Vec<(u16, u64)> = (0..4).map(|_| give_rx(&mut h, 2048)).collect();
    h.kick(RXQ_INDEX);
    // 65 frames "queued" on a 64-entry tx queue.
    h.guest.set_avail_idx(TXQ_INDEX, 65);
    h.kick(TXQ_INDEX);
    assert!(h.interrupt.needs_reset(), "DEVICE_NEEDS_RESET");
    assert!(h.guest.take_used(TXQ_INDEX).is_empty());
    // Stopped: frames from the wire stay on the tap, and the tap isn't watched (no busy loop).
    wire.send(&frame(MAC, PEER_MAC, b"vpod-after-broken"));
    h.run();
    assert!(rx_frames_matching(&mut h, &bufs, b"vpod-after-broken").is_empty());
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0, "event loop idle");
}

#[test]
fn broken_rx_ring_needs_reset() {
    let (name, mut h) = setup();
    let wire = Wire::open(&name);
    give_rx(&mut h, 2048);
    let idx = h.guest.avail_idx(RXQ_INDEX);
    h.guest.set_avail_idx(RXQ_INDEX, idx.wrapping_add(200));
    h.kick(RXQ_INDEX);
    wire.send(&frame(MAC, PEER_MAC, b"vpod-broken-rx"));
    h.run();
    assert!(h.interrupt.needs_reset(), "DEVICE_NEEDS_RESET");
    assert!(h.guest.take_used(RXQ_INDEX).is_empty());
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0, "event loop idle");
}
