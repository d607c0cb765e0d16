//! End-to-end tests of the vsock device: a fake guest drives the queues in test memory, real unix
//! sockets play the host side, the device runs in an event manager as in the VMM.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::connection::CONN_BUF_ALLOC;
use super::device::{EVQ_INDEX, RXQ_INDEX, TXQ_INDEX};
use super::packet::*;
use super::{Vsock, VsockError};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::test_utils::{within, Harness};

const CID: u64 = 3;

struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vpod-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type H = Harness<Vsock>;

fn setup(name: &str) -> (TmpDir, PathBuf, H) {
    let dir = TmpDir::new(name);
    let uds = dir.0.join("v.sock");
    let dev = Vsock::new(CID, &uds).unwrap();
    let h = Harness::new(dev, 64);
    (dir, uds, h)
}

/// Makes `n` rx buffers (header + 4 KiB, as Linux does) available and kicks rx.
fn give_rx(h: &mut H, n: usize) {
    for _ in 0..n {
        let hdr = h.guest.alloc(PKT_HEADER_SIZE as u32);
        let data = h.guest.alloc(4096);
        h.guest.add_chain(
            RXQ_INDEX,
            &[(hdr, PKT_HEADER_SIZE as u32, true), (data, 4096, true)],
        );
    }
    h.kick(RXQ_INDEX);
}

/// The guest sends a packet on tx (header and data in two descriptors).
fn send(h: &mut H, mut hdr: Header, data: &[u8]) {
    hdr.len = data.len() as u32;
    let a = h.guest.alloc(PKT_HEADER_SIZE as u32);
    h.guest.write(a, &hdr.to_bytes());
    if data.is_empty() {
        h.guest
            .add_chain(TXQ_INDEX, &[(a, PKT_HEADER_SIZE as u32, false)]);
    } else {
        let d = h.guest.alloc(data.len() as u32);
        h.guest.write(d, data);
        h.guest.add_chain(
            TXQ_INDEX,
            &[
                (a, PKT_HEADER_SIZE as u32, false),
                (d, data.len() as u32, false),
            ],
        );
    }
    h.kick(TXQ_INDEX);
}

/// Packets the device delivered on rx since the last call.
fn recv(h: &mut H) -> Vec<(Header, Vec<u8>)> {
    let used = h.guest.take_used(RXQ_INDEX);
    used.into_iter()
        .map(|(head, len)| {
            let descs = h.guest.rings[RXQ_INDEX].chains[&head].clone();
            let hdr = Header::from_bytes(&h.guest.read(descs[0].0, PKT_HEADER_SIZE)).unwrap();
            assert_eq!(len as usize, PKT_HEADER_SIZE + hdr.len as usize);
            let data = h.guest.read(descs[1].0, hdr.len as usize);
            (hdr, data)
        })
        .collect()
}

fn from_guest(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: VSOCK_HOST_CID,
        src_port,
        dst_port,
        type_: VSOCK_TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Default::default()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn host_connect(h: &mut H, uds: &PathBuf, port: u32) -> (UnixStream, Header) {
    let mut host = UnixStream::connect(uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    h.run();
    let pkts = recv(h);
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(req.op, VSOCK_OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (VSOCK_HOST_CID, CID));
    assert_eq!(req.dst_port, port);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(
        (req.type_, req.buf_alloc),
        (VSOCK_TYPE_STREAM, CONN_BUF_ALLOC)
    );
    (host, req)
}

#[test]
fn config_features_and_constructor_errors() {
    let (_dir, uds, h) = setup("config");
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(dev.avail_features(), 1 << 32);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    dev.read_config(u64::MAX - 1, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert!(uds.exists());

    assert!(matches!(
        Vsock::new(2, &uds),
        Err(VsockError::InvalidCid(2))
    ));
    let bad = Vsock::new(3, std::path::Path::new("/nonexistent-dir/v.sock"));
    assert!(matches!(bad, Err(VsockError::Bind { .. })));
}

#[test]
fn drop_removes_socket_file() {
    let dir = TmpDir::new("drop");
    let uds = dir.0.join("v.sock");
    let dev = Vsock::new(CID, &uds).unwrap();
    assert!(uds.exists());
    drop(dev);
    assert!(!uds.exists());
    // A stale socket file from a crashed VMM doesn't block a new device.
    let stale = UnixListener::bind(&uds).unwrap();
    drop(stale);
    let _dev = Vsock::new(CID, &uds).unwrap();
    // But a regular file is never removed.
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(Vsock::new(CID, &file).is_err());
    assert!(file.exists());
}

#[test]
fn host_connect_handshake_data_and_close() {
    let (_dir, uds, mut h) = setup("hostconn");
    give_rx(&mut h, 8);
    let (mut host, req) = host_connect(&mut h, &uds, 1234);
    let local = req.src_port;

    send(&mut h, from_guest(1234, local, VSOCK_OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    assert_eq!(h.dev.lock().unwrap().connection_count(), 1);

    // Host -> guest.
    h.irq_fired();
    host.write_all(b"hello from host").unwrap();
    h.run();
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, VSOCK_OP_RW);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (local, 1234));
    assert_eq!(pkts[0].1, b"hello from host");
    assert!(h.irq_fired());

    // Guest -> host.
    send(
        &mut h,
        from_guest(1234, local, VSOCK_OP_RW),
        b"hello from guest",
    );
    let mut buf = [0u8; 16];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from guest");

    // Guest closes: host sees EOF, guest gets the RST that completes its close.
    let mut sh = from_guest(1234, local, VSOCK_OP_SHUTDOWN);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_BOTH;
    send(&mut h, sh, &[]);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, VSOCK_OP_RST);
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn host_connect_refused_and_bad_lines() {
    let (_dir, uds, mut h) = setup("refused");
    give_rx(&mut h, 8);
    let (mut host, req) = host_connect(&mut h, &uds, 99);
    // Nothing listens on 99 in the guest: it answers RST, the host stream is closed.
    send(&mut h, from_guest(99, req.src_port, VSOCK_OP_RST), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert!(recv(&mut h).is_empty());

    for line in [
        &b"HELLO\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999999999999999999999999999999\n",
    ] {
        let mut c = UnixStream::connect(&uds).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(line).unwrap();
        h.run();
        // Closed: EOF, or ECONNRESET when we closed with part of the line unread.
        match c.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "{line:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{line:?}"),
        }
    }
    // A client that hangs up mid-line.
    let mut c = UnixStream::connect(&uds).unwrap();
    c.write_all(b"CONN").unwrap();
    drop(c);
    h.run();
    assert!(recv(&mut h).is_empty());
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);

    // Host gives up before the guest answers: the guest gets an RST.
    let (host, req) = host_connect(&mut h, &uds, 7);
    drop(host);
    h.run();
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port),
        (VSOCK_OP_RST, req.src_port)
    );
}

#[test]
fn host_data_sent_with_connect_line_is_forwarded() {
    let (_dir, uds, mut h) = setup("eager");
    give_rx(&mut h, 8);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\nearly bytes").unwrap();
    h.run();
    let req = recv(&mut h)[0].0;
    send(&mut h, from_guest(52, req.src_port, VSOCK_OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"early bytes");
}

#[test]
fn guest_connect_to_host_listener() {
    let (_dir, uds, mut h) = setup("guestconn");
    let mut path = uds.clone().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    give_rx(&mut h, 8);

    send(&mut h, from_guest(7777, 5000, VSOCK_OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(resp.op, VSOCK_OP_RESPONSE);
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.dst_cid),
        (5000, 7777, CID)
    );

    send(&mut h, from_guest(7777, 5000, VSOCK_OP_RW), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    h.run();
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"pong");

    // A second REQUEST for a live connection is a protocol error: RST.
    // (Use a different guest port to keep this connection.)
    // Host closes: the guest learns it will get no more data.
    drop(host);
    h.run();
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, VSOCK_OP_SHUTDOWN);
    assert_ne!(pkts[0].0.flags & VSOCK_FLAGS_SHUTDOWN_SEND, 0);
    // The guest finishes with RST: no answer, connection gone.
    send(&mut h, from_guest(7777, 5000, VSOCK_OP_RST), &[]);
    assert!(recv(&mut h).is_empty());
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);

    // Nobody listens on port 6000: RST.
    send(&mut h, from_guest(7778, 6000, VSOCK_OP_REQUEST), &[]);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, VSOCK_OP_RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6000, 7778));
}

#[test]
fn credit_flow_control_end_to_end() {
    let (_dir, uds, mut h) = setup("credit");
    give_rx(&mut h, 8);
    let (mut host, req) = host_connect(&mut h, &uds, 1234);
    let local = req.src_port;
    let mut resp = from_guest(1234, local, VSOCK_OP_RESPONSE);
    resp.buf_alloc = 8;
    send(&mut h, resp, &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));

    host.write_all(&[b'a'; 20]).unwrap();
    h.run();
    let pkts = recv(&mut h);
    let ops: Vec<u16> = pkts.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [VSOCK_OP_RW, VSOCK_OP_CREDIT_REQUEST]);
    assert_eq!(pkts[0].1.len(), 8);
    // Out of credit with data waiting: the event loop must be idle, not spinning.
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0);

    let mut upd = from_guest(1234, local, VSOCK_OP_CREDIT_UPDATE);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    send(&mut h, upd, &[]);
    let pkts = recv(&mut h);
    assert_eq!(pkts[0].0.op, VSOCK_OP_RW);
    assert_eq!(pkts[0].1.len(), 8);

    // The last 4 bytes.
    let mut upd = from_guest(1234, local, VSOCK_OP_CREDIT_UPDATE);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 16;
    send(&mut h, upd, &[]);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"aaaa");

    // The guest asks for our credit: an explicit update.
    let mut creq = from_guest(1234, local, VSOCK_OP_CREDIT_REQUEST);
    creq.buf_alloc = 8;
    creq.fwd_cnt = 20;
    send(&mut h, creq, &[]);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    let upd = &pkts[0];
    assert_eq!(upd.0.op, VSOCK_OP_CREDIT_UPDATE);
    assert_eq!(upd.0.fwd_cnt, 0);
    assert_eq!(upd.0.buf_alloc, CONN_BUF_ALLOC);
}

#[test]
fn no_rx_buffers_waits_for_kick() {
    let (_dir, uds, mut h) = setup("norx");
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1\n").unwrap();
    h.run();
    // No rx buffers: nothing delivered, and the loop is idle (no busy polling).
    assert!(recv(&mut h).is_empty());
    assert_eq!(h.em.run_with_timeout(50).unwrap(), 0);
    give_rx(&mut h, 1);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, VSOCK_OP_REQUEST);
}

#[test]
fn bad_packets_are_dropped_and_device_survives() {
    let (_dir, uds, mut h) = setup("bad");
    give_rx(&mut h, 16);
    let hs = PKT_HEADER_SIZE as u32;

    // Header descriptor too short.
    let a = h.guest.alloc(64);
    h.guest.add_chain(TXQ_INDEX, &[(a, 10, false)]);
    // `len` past the data buffer.
    let mut hdr = from_guest(1, 2, VSOCK_OP_RW);
    hdr.len = 100;
    let a = h.guest.alloc(hs);
    let d = h.guest.alloc(10);
    h.guest.write(a, &hdr.to_bytes());
    h.guest
        .add_chain(TXQ_INDEX, &[(a, hs, false), (d, 10, false)]);
    // `len` over the maximum payload.
    hdr.len = MAX_PKT_DATA + 1;
    let a = h.guest.alloc(hs);
    h.guest.write(a, &hdr.to_bytes());
    h.guest.add_chain(
        TXQ_INDEX,
        &[(a, hs, false), (0x10_0000, MAX_PKT_DATA + 1, false)],
    );
    // Device-writable tx buffer.
    let a = h.guest.alloc(hs);
    h.guest
        .write(a, &from_guest(1, 2, VSOCK_OP_REQUEST).to_bytes());
    h.guest.add_chain(TXQ_INDEX, &[(a, hs, true)]);
    // Header outside guest memory.
    h.guest
        .add_chain(TXQ_INDEX, &[(0xffff_0000_0000, hs, false)]);
    h.kick(TXQ_INDEX);
    assert_eq!(h.guest.take_used(TXQ_INDEX).len(), 5);
    assert!(recv(&mut h).is_empty());

    // Wrong cids: dropped silently.
    let mut wrong_dst = from_guest(1, 2, VSOCK_OP_REQUEST);
    wrong_dst.dst_cid = 5;
    send(&mut h, wrong_dst, &[]);
    let mut wrong_src = from_guest(1, 2, VSOCK_OP_REQUEST);
    wrong_src.src_cid = 9;
    send(&mut h, wrong_src, &[]);
    assert!(recv(&mut h).is_empty());

    // Unknown op, data for an unknown connection, a non-stream type: RST each.
    send(&mut h, from_guest(1, 2, 42), &[]);
    send(&mut h, from_guest(3, 4, VSOCK_OP_RW), b"data");
    let mut dgram = from_guest(5, 6, VSOCK_OP_REQUEST);
    dgram.type_ = 2;
    send(&mut h, dgram, &[]);
    // RST for an unknown connection: never answered.
    send(&mut h, from_guest(7, 8, VSOCK_OP_RST), &[]);
    let pkts = recv(&mut h);
    let got: Vec<(u16, u32, u32)> = pkts
        .iter()
        .map(|p| (p.0.op, p.0.src_port, p.0.dst_port))
        .collect();
    assert_eq!(
        got,
        [
            (VSOCK_OP_RST, 2, 1),
            (VSOCK_OP_RST, 4, 3),
            (VSOCK_OP_RST, 6, 5)
        ]
    );

    // Bad rx chains: read-only, and header-only without room for data. Both are consumed as
    // unusable; the next good buffer still gets the packet.
    let mut h2 = setup("bad-rx");
    let a = h2.2.guest.alloc(hs);
    h2.2.guest.add_chain(RXQ_INDEX, &[(a, hs, false)]);
    let a = h2.2.guest.alloc(hs);
    h2.2.guest.add_chain(RXQ_INDEX, &[(a, hs, true)]);
    h2.2.kick(RXQ_INDEX);
    send(&mut h2.2, from_guest(1, 2, 42), &[]);
    assert_eq!(h2.2.guest.take_used(RXQ_INDEX), [(0, 0), (1, 0)]);
    give_rx(&mut h2.2, 1);
    let pkts = recv(&mut h2.2);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, VSOCK_OP_RST);

    // The event queue is accepted and left alone.
    h.kick(EVQ_INDEX);

    // After all that, a real connection still works.
    let (mut host, req) = host_connect(&mut h, &uds, 80);
    send(&mut h, from_guest(80, req.src_port, VSOCK_OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
}

#[test]
fn guest_flood_is_bounded() {
    // A guest that ignores credit gets reset rather than growing our buffers.
    let (_dir, uds, mut h) = setup("flood");
    let mut path = uds.clone().into_os_string();
    path.push("_9");
    let listener = UnixListener::bind(&path).unwrap();
    give_rx(&mut h, 8);
    send(&mut h, from_guest(100, 9, VSOCK_OP_REQUEST), &[]);
    let (_host, _) = listener.accept().unwrap(); // never reads
    assert_eq!(recv(&mut h)[0].0.op, VSOCK_OP_RESPONSE);
    let chunk = vec![0x55u8; MAX_PKT_DATA as usize];
    let mut reset = false;
    for _ in 0..32 {
        send(&mut h, from_guest(100, 9, VSOCK_OP_RW), &chunk);
        if recv(&mut h).iter().any(|p| p.0.op == VSOCK_OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(h.dev.lock().unwrap().connection_count(), 0);
}

/// Host -> guest and guest -> host throughput through the device with a fake guest that recycles
/// its buffers and returns credit. Run: `cargo test --release -p vpod-vmm throughput -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn throughput() {
    const TOTAL: usize = 64 << 20;
    const RX_BUFS: usize = 32;
    let (_dir, uds, mut h) = setup("tput");
    // A fixed pool of rx buffers, recycled.
    let pool: Vec<(u64, u64)> = (0..RX_BUFS)
        .map(|_| {
            (
                h.guest.alloc(PKT_HEADER_SIZE as u32),
                h.guest.alloc(MAX_PKT_DATA),
            )
        })
        .collect();
    let mut heads = std::collections::HashMap::new();
    for &(hd, d) in &pool {
        let head = h.guest.add_chain(
            RXQ_INDEX,
            &[(hd, PKT_HEADER_SIZE as u32, true), (d, MAX_PKT_DATA, true)],
        );
        heads.insert(head, hd);
    }
    let (host, req) = host_connect(&mut h, &uds, 1);
    let local = req.src_port;
    let mut resp = from_guest(1, local, VSOCK_OP_RESPONSE);
    resp.buf_alloc = 1 << 20;
    send(&mut h, resp, &[]);
    let mut host = host;
    assert_eq!(read_line(&mut host), format!("OK {local}"));

    // Host -> guest.
    let writer = {
        let host = host.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![0xa5u8; 1 << 20];
            let mut host = host;
            for _ in 0..TOTAL >> 20 {
                host.write_all(&chunk).unwrap();
            }
        })
    };
    let start = std::time::Instant::now();
    let mut got = 0usize;
    let mut fwd = 0u32;
    let mut last_update = 0u32;
    let upd_hdr = h.guest.alloc(PKT_HEADER_SIZE as u32);
    while got < TOTAL {
        h.em.run_with_timeout(100).unwrap();
        for (head, len) in h.guest.take_used(RXQ_INDEX) {
            let hd = heads[&head];
            let hdr = Header::from_bytes(&h.guest.read(hd, PKT_HEADER_SIZE)).unwrap();
            assert!(len as usize >= PKT_HEADER_SIZE);
            if hdr.op == VSOCK_OP_RW {
                got += len as usize - PKT_HEADER_SIZE;
                fwd = fwd.wrapping_add(hdr.len);
            }
            h.guest.repost(RXQ_INDEX, head);
        }
        h.queue_evts[RXQ_INDEX].write(1).unwrap();
        if fwd.wrapping_sub(last_update) >= 256 * 1024 {
            let mut upd = from_guest(1, local, VSOCK_OP_CREDIT_UPDATE);
            upd.buf_alloc = 1 << 20;
            upd.fwd_cnt = fwd;
            h.guest.write(upd_hdr, &upd.to_bytes());
            h.guest
                .add_chain(TXQ_INDEX, &[(upd_hdr, PKT_HEADER_SIZE as u32, false)]);
            h.queue_evts[TXQ_INDEX].write(1).unwrap();
            last_update = fwd;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    println!(
        "vsock host->guest: {} MiB in {secs:.3}s = {:.0} MiB/s",
        TOTAL >> 20,
        (TOTAL >> 20) as f64 / secs
    );

    // Guest -> host: 64 KiB packets from one recycled buffer, within the credit we advertise.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        while n < TOTAL {
            n += host.read(&mut buf).unwrap();
        }
    });
    let data = h.guest.alloc(MAX_PKT_DATA);
    h.guest.write(data, &vec![0x5au8; MAX_PKT_DATA as usize]);
    let tx_hdrs: Vec<u64> = (0..16)
        .map(|_| h.guest.alloc(PKT_HEADER_SIZE as u32))
        .collect();
    let mut rw = from_guest(1, local, VSOCK_OP_RW);
    rw.buf_alloc = 1 << 20;
    rw.fwd_cnt = fwd;
    rw.len = MAX_PKT_DATA;
    for &a in &tx_hdrs {
        h.guest.write(a, &rw.to_bytes());
    }
    let start = std::time::Instant::now();
    let (mut sent, mut in_flight, mut host_fwd) = (0usize, 0u32, 0u32);
    let mut i = 0;
    while sent < TOTAL {
        h.guest.take_used(TXQ_INDEX);
        // Track the device's fwd_cnt from whatever it sends us (credit updates).
        for (head, _) in h.guest.take_used(RXQ_INDEX) {
            let hdr = Header::from_bytes(&h.guest.read(heads[&head], PKT_HEADER_SIZE)).unwrap();
            host_fwd = hdr.fwd_cnt;
            h.guest.repost(RXQ_INDEX, head);
        }
        let credit = CONN_BUF_ALLOC - (in_flight.wrapping_sub(host_fwd));
        let mut queued = 0;
        while credit >= MAX_PKT_DATA * (queued + 1) && queued < 8 && sent < TOTAL {
            let a = tx_hdrs[i % tx_hdrs.len()];
            i += 1;
            h.guest.add_chain(
                TXQ_INDEX,
                &[
                    (a, PKT_HEADER_SIZE as u32, false),
                    (data, MAX_PKT_DATA, false),
                ],
            );
            queued += 1;
            sent += MAX_PKT_DATA as usize;
            in_flight = in_flight.wrapping_add(MAX_PKT_DATA);
        }
        h.queue_evts[TXQ_INDEX].write(1).unwrap();
        h.queue_evts[RXQ_INDEX].write(1).unwrap();
        h.em.run_with_timeout(100).unwrap();
    }
    reader.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(h.dev.lock().unwrap().connection_count(), 1);
    println!(
        "vsock guest->host: {} MiB in {secs:.3}s = {:.0} MiB/s",
        TOTAL >> 20,
        (TOTAL >> 20) as f64 / secs
    );
}

/// An rx chain whose writable part has no room for data (a header descriptor plus a 0-length
/// one), posted while a host peer has unread data: the device must neither spin nor stall the
/// data for the guest's next, real buffer.
#[test]
fn rx_chain_without_data_room_does_not_hang() {
    let (_dir, uds, mut h) = setup("zerorx");
    give_rx(&mut h, 1);
    let (mut host, req) = host_connect(&mut h, &uds, 1234);
    let local = req.src_port;
    send(&mut h, from_guest(1234, local, VSOCK_OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    // No rx buffers left; the host writes and the data waits.
    host.write_all(b"unread host data").unwrap();
    h.run();
    assert!(recv(&mut h).is_empty());

    let hs = PKT_HEADER_SIZE as u32;
    let hdr = h.guest.alloc(hs);
    let data = h.guest.alloc(16);
    let bad = h
        .guest
        .add_chain(RXQ_INDEX, &[(hdr, hs, true), (data, 0, true)]);
    let mut h = within(Duration::from_secs(5), move || {
        h.kick(RXQ_INDEX);
        h
    });
    assert_eq!(
        h.guest.take_used(RXQ_INDEX),
        [(bad, 0)],
        "unusable: returned empty"
    );
    // The next real buffer gets the data.
    give_rx(&mut h, 1);
    let pkts = recv(&mut h);
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, VSOCK_OP_RW);
    assert_eq!(pkts[0].1, b"unread host data");
}

#[test]
fn broken_rings_need_reset_and_stop_the_device() {
    for q in [TXQ_INDEX, RXQ_INDEX] {
        let (_dir, uds, mut h) = setup(&format!("broken{q}"));
        // 65 entries "available" on a 64-entry queue.
        h.guest.set_avail_idx(q, 65);
        h.kick(q);
        // The rx queue is only popped with something to deliver: a host connection.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 5\n").unwrap();
        h.run();
        assert!(h.interrupt.needs_reset(), "queue {q}: DEVICE_NEEDS_RESET");
        assert!(h.guest.take_used(q).is_empty());
        assert_eq!(h.em.run_with_timeout(50).unwrap(), 0, "queue {q}: idle");
    }
}

/// One connection ending (its host side closes, the guest's late packets for it come in) while
/// another streams guest → host: the streaming one gets every byte, in order, and nothing else.
#[test]
fn a_connection_ending_leaves_another_streams_bytes_whole() {
    let (_dir, uds, mut h) = setup("twoconns");
    give_rx(&mut h, 32);
    let (mut a, req_a) = host_connect(&mut h, &uds, 1024);
    send(
        &mut h,
        from_guest(1024, req_a.src_port, VSOCK_OP_RESPONSE),
        &[],
    );
    assert_eq!(read_line(&mut a), format!("OK {}", req_a.src_port));
    let (mut b, req_b) = host_connect(&mut h, &uds, 1024);
    send(
        &mut h,
        from_guest(1024, req_b.src_port, VSOCK_OP_RESPONSE),
        &[],
    );
    assert_eq!(read_line(&mut b), format!("OK {}", req_b.src_port));
    let mut a = Some(a);
    let mut got = Vec::new();
    let mut sent = Vec::new();
    // One tx buffer pair, reused: the device is done with a chain once the kick returns.
    let (tx_hdr, tx_data) = (h.guest.alloc(PKT_HEADER_SIZE as u32), h.guest.alloc(4096));
    for i in 0..200u32 {
        let chunk: Vec<u8> = (0..4096u32).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let mut hdr = from_guest(1024, req_b.src_port, VSOCK_OP_RW);
        hdr.len = 4096;
        h.guest.write(tx_hdr, &hdr.to_bytes());
        h.guest.write(tx_data, &chunk);
        h.guest.add_chain(
            TXQ_INDEX,
            &[
                (tx_hdr, PKT_HEADER_SIZE as u32, false),
                (tx_data, 4096, false),
            ],
        );
        h.kick(TXQ_INDEX);
        sent.extend_from_slice(&chunk);
        let mut buf = vec![0u8; 4096];
        b.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
        got.extend_from_slice(&buf);
        if i == 50 {
            // A's host side goes; the guest answers late, with data and a shutdown for A.
            drop(a.take());
            h.run();
            send(
                &mut h,
                from_guest(1024, req_a.src_port, VSOCK_OP_RW),
                b"late",
            );
            let mut sh = from_guest(1024, req_a.src_port, VSOCK_OP_SHUTDOWN);
            sh.flags = VSOCK_FLAGS_SHUTDOWN_BOTH;
            send(&mut h, sh, &[]);
            let pkts = recv(&mut h);
            assert!(
                pkts.iter().all(|(p, _)| p.dst_port == 1024
                    && (p.src_port == req_a.src_port || p.op == VSOCK_OP_CREDIT_UPDATE)),
                "{pkts:?}"
            );
            give_rx(&mut h, 32);
        }
    }
    assert!(got == sent, "B's bytes changed");
    b.set_nonblocking(true).unwrap();
    let mut extra = [0u8; 64];
    assert!(
        matches!(b.read(&mut extra), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B got bytes nobody sent it"
    );
}
