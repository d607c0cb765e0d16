//! The host side of the vsock device: routes guest packets to connections, accepts host
//! connections on the unix listener (`CONNECT <port>\n`), connects guest requests to
//! `<uds_path>_<port>`, and keeps epoll's interest list in step with what each connection needs.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};

use super::connection::{ConnKey, Connection};
use super::packet::*;
use super::unix::connect_nonblocking;

/// Event data tags of the fds the muxer registers.
pub const TOKEN_LISTENER: u32 = 0x10;
pub const TOKEN_HOST_PENDING: u32 = 0x11;
pub const TOKEN_CONN: u32 = 0x12;

/// Bounds, so that neither a guest nor a host client can make us grow without limit.
const MAX_CONNECTIONS: usize = 1024;
const MAX_PENDING_HOST: usize = 64;
const MAX_RST_QUEUE: usize = 1024;
/// `CONNECT 4294967295\n` is 19 bytes.
const MAX_CONNECT_LINE: usize = 32;
/// Host-initiated connections use local ports from here up (Firecracker does the same).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A host client that connected to the listener and hasn't finished its CONNECT line.
#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    registered: bool,
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_registered: bool,
    pending_host: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    fd_to_key: HashMap<RawFd, ConnKey>,
    /// Connections that may have a packet for the guest, in service order.
    rxq: VecDeque<ConnKey>,
    /// RSTs for packets that matched no connection.
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    /// Streams to close once they're out of epoll (closing first would leave a stale entry in the
    /// event manager's fd table).
    graveyard: Vec<(UnixStream, bool)>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        // A socket file left by a previous (crashed) VMM would make bind fail; only a socket is
        // removed, never a regular file someone pointed us at by mistake.
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(uds_path)?;
            }
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listener_registered: false,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            fd_to_key: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            graveyard: Vec::new(),
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether [`Muxer::next_rx`] may produce a packet.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    fn queue_rst(&mut self, hdr: Header) {
        if self.rst_queue.len() < MAX_RST_QUEUE {
            self.rst_queue.push_back(hdr);
        } else {
            tracing::debug!("vsock: rst queue full, dropping RST");
        }
    }

    /// Puts `key` on the rx list if it has something for the guest, drops it if it's finished.
    fn update_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_finished() {
            self.remove_conn(key);
        } else if !conn.in_rxq && conn.has_rx() {
            conn.in_rxq = true;
            self.rxq.push_back(key);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            tracing::debug!(?key, "vsock: connection closed: {}", conn.end);
            self.fd_to_key.remove(&conn.stream().as_raw_fd());
            let registered = conn.registered.is_some();
            self.graveyard.push((conn.into_stream(), registered));
        }
    }

    fn insert_conn(&mut self, key: ConnKey, conn: Connection) {
        self.fd_to_key.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.update_conn(key);
    }

    /// A packet the guest put on the tx queue; `data` is its payload (`hdr.len` bytes).
    pub fn handle_guest_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != VSOCK_HOST_CID {
            tracing::debug!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "vsock: dropping packet with wrong cids"
            );
            return;
        }
        if hdr.type_ != VSOCK_TYPE_STREAM {
            // Only stream sockets are offered (no SEQPACKET feature).
            if hdr.op != VSOCK_OP_RST {
                self.queue_rst(Header::rst_reply(hdr));
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.handle_guest_pkt(hdr, data);
            self.update_conn(key);
            return;
        }
        match hdr.op {
            VSOCK_OP_REQUEST => self.guest_connect(key, hdr),
            // Never answer an RST (two devices could ping-pong forever).
            VSOCK_OP_RST => {}
            _ => self.queue_rst(Header::rst_reply(hdr)),
        }
    }

    /// The guest connects to host port `key.local_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_rst(Header::rst_reply(hdr));
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::new_peer(stream, key, self.guest_cid, hdr);
                self.insert_conn(key, conn);
            }
            Err(e) => {
                tracing::debug!(path = ?path, "vsock: guest connect failed: {e}");
                self.queue_rst(Header::rst_reply(hdr));
            }
        }
    }

    /// The next packet for the guest, payload read into `buf` (at most `buf.len()` bytes).
    ///
    /// Each connection on the rx list gets at most one turn per call: one that has something but
    /// nothing for this `buf` (only data, and a buffer with no room for any) goes back on the list
    /// and `None` comes back, instead of going round forever.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(hdr) = self.rst_queue.pop_front() {
            return Some((hdr, 0));
        }
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            let pkt = conn.next_rx(buf);
            // Back of the list if it has more: connections take turns.
            self.update_conn(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Epoll event on one of the muxer's fds (`data` is its token).
    pub fn handle_event(&mut self, data: u32, fd: RawFd, set: EventSet) {
        match data {
            TOKEN_LISTENER => self.accept_all(),
            TOKEN_HOST_PENDING => self.read_connect_line(fd, set),
            TOKEN_CONN => {
                if let Some(&key) = self.fd_to_key.get(&fd) {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.host_event(set);
                    }
                    self.update_conn(key);
                }
            }
            _ => tracing::warn!(data, "vsock: unexpected event token"),
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending_host.len() >= MAX_PENDING_HOST {
                        tracing::warn!("vsock: too many pending host connections, refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!("vsock: set_nonblocking on accepted stream: {e}");
                        continue;
                    }
                    let pending = PendingHost {
                        stream,
                        line: Vec::new(),
                        registered: false,
                    };
                    self.pending_host
                        .insert(pending.stream.as_raw_fd(), pending);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: try again on the next event rather than spin here.
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n` one byte at a time, so that data the client
    /// sends right after the line stays in the socket for the connection to forward.
    fn read_connect_line(&mut self, fd: RawFd, set: EventSet) {
        let Some(pending) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let mut done = None;
        loop {
            let mut b = [0u8; 1];
            match (&pending.stream).read(&mut b) {
                Ok(0) => {
                    done = Some(Err("closed before CONNECT"));
                    break;
                }
                Ok(_) if b[0] == b'\n' => {
                    done = Some(Ok(()));
                    break;
                }
                Ok(_) => {
                    pending.line.push(b[0]);
                    if pending.line.len() > MAX_CONNECT_LINE {
                        done = Some(Err("CONNECT line too long"));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    done = Some(Err("read error"));
                    break;
                }
            }
        }
        if done.is_none() && set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            done = Some(Err("hang up before CONNECT"));
        }
        let Some(result) = done else {
            return;
        };
        let Some(pending) = self.pending_host.remove(&fd) else {
            return;
        };
        let port = match result.and_then(|()| parse_connect(&pending.line)) {
            Ok(port) if self.conns.len() < MAX_CONNECTIONS => port,
            Ok(_) => {
                tracing::warn!("vsock: too many connections, refusing host CONNECT");
                self.graveyard.push((pending.stream, pending.registered));
                return;
            }
            Err(why) => {
                tracing::debug!("vsock: dropping host client: {why}");
                self.graveyard.push((pending.stream, pending.registered));
                return;
            }
        };
        let key = ConnKey {
            local_port: self.alloc_local_port(port),
            peer_port: port,
        };
        let mut conn = Connection::new_local(pending.stream, key, self.guest_cid);
        // Same fd, still in epoll: sync_epoll will modify instead of add.
        conn.registered = pending.registered.then_some(EventSet::IN);
        self.insert_conn(key, conn);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            // At most MAX_CONNECTIONS are in use, so this terminates quickly.
            if !self.conns.contains_key(&key) {
                return port;
            }
        }
    }

    /// Brings epoll in line with what the listener, pending clients and connections need.
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for (stream, registered) in self.graveyard.drain(..) {
            if registered {
                if let Err(e) = ops.remove(Events::empty(&stream)) {
                    tracing::warn!("vsock: epoll remove: {e:?}");
                }
            }
        }
        if !self.listener_registered {
            match ops.add(Events::with_data(
                &self.listener,
                TOKEN_LISTENER,
                EventSet::IN,
            )) {
                Ok(()) => self.listener_registered = true,
                Err(e) => tracing::error!("vsock: registering the unix listener: {e:?}"),
            }
        }
        for pending in self.pending_host.values_mut() {
            if !pending.registered {
                let ev = Events::with_data(&pending.stream, TOKEN_HOST_PENDING, EventSet::IN);
                match ops.add(ev) {
                    Ok(()) => pending.registered = true,
                    Err(e) => tracing::warn!("vsock: epoll add: {e:?}"),
                }
            }
        }
        for conn in self.conns.values_mut() {
            let want = conn.interest();
            if want == conn.registered {
                continue;
            }
            let res = match (conn.registered, want) {
                (None, Some(set)) => ops.add(Events::with_data(conn.stream(), TOKEN_CONN, set)),
                (Some(_), Some(set)) => {
                    ops.modify(Events::with_data(conn.stream(), TOKEN_CONN, set))
                }
                (Some(_), None) => ops.remove(Events::empty(conn.stream())),
                (None, None) => Ok(()),
            };
            match res {
                Ok(()) => conn.registered = want,
                Err(e) => tracing::warn!("vsock: epoll update: {e:?}"),
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8")?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line
        .strip_prefix("CONNECT ")
        .ok_or("expected `CONNECT <port>`")?;
    port.trim()
        .parse::<u32>()
        .map_err(|_| "bad port in CONNECT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 99999999999").is_err());
        assert!(parse_connect(b"HELLO 5").is_err());
        assert!(parse_connect(&[0xff, 0xfe]).is_err());
    }
}
