//! One connection's state machine and credit flow, against a unix socket pair.

use super::*;
use std::io::Write;

fn pair() -> (Connection, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let key = ConnKey {
        local_port: 1 << 30,
        peer_port: 52,
    };
    (Connection::new_local(a, key, 3), b)
}

fn guest(op: u16) -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 52,
        dst_port: 1 << 30,
        type_: VSOCK_TYPE_STREAM,
        op,
        buf_alloc: 16,
        ..Default::default()
    }
}

fn establish() -> (Connection, UnixStream) {
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 64];
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, VSOCK_OP_REQUEST);
    assert!(c.next_rx(&mut buf).is_none());
    c.handle_guest_pkt(&guest(VSOCK_OP_RESPONSE), &[]);
    assert_eq!(c.state(), ConnState::Established);
    let mut ok = [0u8; 14];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    (c, host)
}

#[test]
fn credit_limits_host_to_guest() {
    let (mut c, mut host) = establish();
    host.write_all(&[7u8; 40]).unwrap();
    c.host_event(EventSet::IN);
    let mut buf = [0u8; 64];
    // Guest granted 16 bytes.
    let (h, n) = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, n, h.len), (VSOCK_OP_RW, 16, 16));
    // Out of credit: ask once, then stay quiet and don't watch the socket.
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, VSOCK_OP_CREDIT_REQUEST);
    assert!(!c.has_rx());
    assert!(c.next_rx(&mut buf).is_none());
    assert_eq!(c.interest(), Some(EventSet::empty()));
    // Guest consumed 16.
    let mut upd = guest(VSOCK_OP_CREDIT_UPDATE);
    upd.fwd_cnt = 16;
    c.handle_guest_pkt(&upd, &[]);
    assert!(c.has_rx());
    let (_, n) = c.next_rx(&mut buf).unwrap();
    assert_eq!(n, 16);
}

#[test]
fn guest_over_credit_is_reset() {
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let key = ConnKey {
        local_port: 5,
        peer_port: 6,
    };
    let mut c = Connection::new_peer(a, key, 3, &guest(VSOCK_OP_REQUEST));
    let big = vec![1u8; 64 * 1024];
    // Nobody reads _b: the socket fills, then tx_buf, then the guest is over its credit.
    for _ in 0..64 {
        c.handle_guest_pkt(&guest(VSOCK_OP_RW), &big);
        if c.state() == ConnState::Dead {
            break;
        }
    }
    assert_eq!(c.state(), ConnState::Dead);
    let mut buf = [0u8; 8];
    assert_eq!(c.next_rx(&mut buf).unwrap().0.op, VSOCK_OP_RST);
    assert!(c.is_finished());
}

#[test]
fn credit_update_sent_when_guest_runs_low() {
    let (mut c, mut host) = establish();
    let chunk = vec![9u8; 64 * 1024];
    for _ in 0..3 {
        c.handle_guest_pkt(&guest(VSOCK_OP_RW), &chunk);
    }
    // Host drains everything: the guest's view (3 * 64K unacked of 256K) needs an update.
    let reader = std::thread::spawn(move || {
        let mut sink = vec![0u8; 3 * 64 * 1024];
        host.read_exact(&mut sink).unwrap();
        sink
    });
    while c.interest().is_some_and(|s| s.contains(EventSet::OUT)) {
        c.host_event(EventSet::OUT);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(reader.join().unwrap().iter().all(|&b| b == 9));
    assert!(c.has_rx());
    let mut buf = [0u8; 8];
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, VSOCK_OP_CREDIT_UPDATE);
    assert_eq!(h.fwd_cnt, 3 * 64 * 1024);
}

#[test]
fn shutdowns_both_ways() {
    let (mut c, mut host) = establish();
    // Host closes its write side: guest learns SHUTDOWN(SEND).
    host.shutdown(Shutdown::Write).unwrap();
    c.host_event(EventSet::IN);
    let mut buf = [0u8; 8];
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(
        (h.op, h.flags),
        (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND)
    );
    // Guest sends its last bytes then closes: host reads them and EOF, guest gets RST.
    c.handle_guest_pkt(&guest(VSOCK_OP_RW), b"bye");
    let mut sh = guest(VSOCK_OP_SHUTDOWN);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_BOTH;
    c.handle_guest_pkt(&sh, &[]);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, VSOCK_OP_RST);
    assert!(c.is_finished());
}

#[test]
fn protocol_errors_reset() {
    // RW before RESPONSE.
    let (mut c, _host) = pair();
    c.handle_guest_pkt(&guest(VSOCK_OP_RW), b"x");
    assert_eq!(c.state(), ConnState::Dead);
    // Unknown op on an established connection.
    let (mut c, _host) = establish();
    c.handle_guest_pkt(&guest(99), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(c.next_rx(&mut buf).unwrap().0.op, VSOCK_OP_RST);
    // Guest RST: no answer.
    let (mut c, _host) = establish();
    c.handle_guest_pkt(&guest(VSOCK_OP_RST), &[]);
    assert!(c.is_finished());
    assert!(c.next_rx(&mut buf).is_none());
}

#[test]
fn host_hangup_before_response_resets() {
    let (mut c, host) = pair();
    drop(host);
    c.host_event(EventSet::HANG_UP | EventSet::IN);
    assert_eq!(c.interest(), None);
    let mut buf = [0u8; 8];
    assert_eq!(c.next_rx(&mut buf).unwrap().0.op, VSOCK_OP_RST);
    assert!(c.is_finished());
}

#[test]
fn host_hangup_drains_then_shuts_down() {
    let (mut c, mut host) = establish();
    host.write_all(b"last").unwrap();
    drop(host);
    c.host_event(EventSet::HANG_UP | EventSet::IN);
    assert_eq!(c.interest(), None);
    let mut buf = [0u8; 64];
    let (h, n) = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, &buf[..n]), (VSOCK_OP_RW, &b"last"[..]));
    let (h, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(
        (h.op, h.flags),
        (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_BOTH)
    );
    // Guest data to a gone host: reset.
    c.handle_guest_pkt(&guest(VSOCK_OP_RW), b"x");
    assert_eq!(c.next_rx(&mut buf).unwrap().0.op, VSOCK_OP_RST);
}
