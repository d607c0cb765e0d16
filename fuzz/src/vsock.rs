//! `vsock`: virtio-vsock's queues under a malicious driver while host peers connect to the
//! device's unix socket (`CONNECT <port>\n`), write, read, shut down and close, and a host
//! listener takes the guest's connections to port [`HOST_PORT`].

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use vpod_vmm::devices::virtio::vsock::packet::{
    Header, PKT_HEADER_SIZE, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};
use vpod_vmm::devices::virtio::vsock::Vsock;

use crate::driver::{DriverOp, Fixture, QueueSetup};

pub const GUEST_CID: u64 = 3;
/// The host port a listener of ours serves (`<uds>_1024`).
pub const HOST_PORT: u32 = 1024;
const RXQ: u8 = 0;
const TXQ: u8 = 1;
const MAX_PEERS: usize = 16;
/// Host-initiated connections take local ports from here up (the device's rule).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cid {
    Guest,
    Host,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Our host listener's port.
    Listen,
    /// The device's n-th local port for host-initiated connections.
    Local(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VOp {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: Cid,
    pub dst_cid: Cid,
    pub src_port: u32,
    pub dst_port: Port,
    pub op: VOp,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    /// `len` other than the data's length.
    pub len: Option<u32>,
    /// `type` other than STREAM.
    pub type_: Option<u16>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Driver(DriverOp),
    /// The guest sends a packet on tx (header + data descriptors) and kicks tx.
    Tx {
        hdr: Hdr,
        data: Vec<u8>,
    },
    /// The guest posts `n % 16 + 1` rx buffers (a 44-byte header descriptor and `data_len`
    /// bytes, Linux's shape) and kicks rx.
    RxBufs {
        n: u8,
        data_len: u16,
    },
    /// A host peer connects and writes `CONNECT <port>\n` and `extra`.
    HostConnect {
        port: u32,
        extra: Vec<u8>,
    },
    /// A host peer connects and writes bytes of its own.
    HostRaw(Vec<u8>),
    HostWrite {
        peer: u8,
        data: Vec<u8>,
    },
    HostRead {
        peer: u8,
    },
    HostShutdown {
        peer: u8,
        write_only: bool,
    },
    HostClose {
        peer: u8,
    },
    /// Our listener accepts the guest's connections to [`HOST_PORT`].
    Accept,
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub queues: [QueueSetup; 3],
    pub ops: Vec<Op>,
}

struct Host {
    dir: PathBuf,
    listener: UnixListener,
}

extern "C" fn remove_dir() {
    if let Some(h) = HOST.get() {
        let _ = std::fs::remove_dir_all(&h.dir);
    }
}

static HOST: OnceLock<Host> = OnceLock::new();

fn host() -> &'static Host {
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vpod-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("vsock fuzz dir");
        let listener = UnixListener::bind(dir.join(format!("v.sock_{HOST_PORT}")))
            .expect("vsock fuzz listener");
        listener.set_nonblocking(true).unwrap();
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(remove_dir) };
        Host { dir, listener }
    })
}

fn header(h: &Hdr, data_len: usize) -> Header {
    let cid = |c: Cid| match c {
        Cid::Guest => GUEST_CID,
        Cid::Host => VSOCK_HOST_CID,
        Cid::Raw(c) => c,
    };
    Header {
        src_cid: cid(h.src_cid),
        dst_cid: cid(h.dst_cid),
        src_port: h.src_port,
        dst_port: match h.dst_port {
            Port::Listen => HOST_PORT,
            Port::Local(n) => FIRST_LOCAL_PORT + u32::from(n),
            Port::Raw(p) => p,
        },
        len: h.len.unwrap_or(data_len as u32),
        type_: h.type_.unwrap_or(VSOCK_TYPE_STREAM),
        op: match h.op {
            VOp::Request => 1,
            VOp::Response => 2,
            VOp::Rst => 3,
            VOp::Shutdown => 4,
            VOp::Rw => 5,
            VOp::CreditUpdate => 6,
            VOp::CreditRequest => 7,
            VOp::Raw(op) => op,
        },
        flags: h.flags,
        buf_alloc: h.buf_alloc,
        fwd_cnt: h.fwd_cnt,
    }
}

fn connect(uds: &std::path::Path, peers: &mut Vec<UnixStream>, bytes: &[u8]) {
    if peers.len() >= MAX_PEERS {
        return;
    }
    if let Ok(mut s) = UnixStream::connect(uds) {
        let _ = s.set_nonblocking(true);
        let _ = s.write(bytes);
        peers.push(s);
    }
}

pub fn run(input: &Input) {
    let host = host();
    let uds = host.dir.join("v.sock");
    let Ok(dev) = Vsock::new(GUEST_CID, &uds) else {
        return;
    };
    let Some(mut f) = Fixture::new(dev, u64::MAX, &input.queues) else {
        return;
    };
    let mut peers: Vec<UnixStream> = Vec::new();
    let peer = |peers: &mut Vec<UnixStream>, i: u8| -> Option<usize> {
        (!peers.is_empty()).then(|| usize::from(i) % peers.len())
    };
    let mut buf = vec![0u8; 64 * 1024];
    for op in &input.ops {
        match op {
            Op::Driver(op) => {
                f.apply(op);
                continue;
            }
            Op::Tx { hdr, data } => {
                let h = header(hdr, data.len());
                let a = f.driver().scratch(PKT_HEADER_SIZE as u64);
                f.driver().write(a, &h.to_bytes());
                let mut chain = vec![(a, PKT_HEADER_SIZE as u32, false)];
                if !data.is_empty() {
                    let d = f.driver().scratch(data.len() as u64);
                    f.driver().write(d, data);
                    chain.push((d, data.len() as u32, false));
                }
                f.driver().chain(TXQ, &chain);
                f.kick(TXQ);
                continue;
            }
            Op::RxBufs { n, data_len } => {
                for _ in 0..=n % 16 {
                    let h = f.driver().scratch(PKT_HEADER_SIZE as u64);
                    let d = f.driver().scratch(u64::from(*data_len));
                    let chain = [
                        (h, PKT_HEADER_SIZE as u32, true),
                        (d, u32::from(*data_len), true),
                    ];
                    f.driver().chain(RXQ, &chain);
                }
                f.kick(RXQ);
                continue;
            }
            Op::HostConnect { port, extra } => {
                let mut line = format!("CONNECT {port}\n").into_bytes();
                line.extend_from_slice(extra);
                connect(&uds, &mut peers, &line);
            }
            Op::HostRaw(bytes) => connect(&uds, &mut peers, bytes),
            Op::HostWrite { peer: i, data } => {
                if let Some(i) = peer(&mut peers, *i) {
                    let _ = peers[i].write(data);
                }
            }
            Op::HostRead { peer: i } => {
                if let Some(i) = peer(&mut peers, *i) {
                    let _ = peers[i].read(&mut buf);
                }
            }
            Op::HostShutdown {
                peer: i,
                write_only,
            } => {
                if let Some(i) = peer(&mut peers, *i) {
                    let how = if *write_only {
                        Shutdown::Write
                    } else {
                        Shutdown::Both
                    };
                    let _ = peers[i].shutdown(how);
                }
            }
            Op::HostClose { peer: i } => {
                if let Some(i) = peer(&mut peers, *i) {
                    peers.swap_remove(i);
                }
            }
            Op::Accept => {
                for _ in 0..MAX_PEERS {
                    match host.listener.accept() {
                        Ok((s, _)) if peers.len() < MAX_PEERS => {
                            let _ = s.set_nonblocking(true);
                            peers.push(s);
                        }
                        _ => break,
                    }
                }
            }
        }
        f.run();
    }
    f.finish();
    drop(peers);
    f.run();
    // Connections the guest made to our listener that nobody accepted: not the next input's.
    while host.listener.accept().is_ok() {}
}
