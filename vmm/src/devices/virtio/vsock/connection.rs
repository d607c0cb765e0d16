//! One vsock stream connection: a guest port joined to a host unix stream.
//!
//! Flow control is virtio-vsock's credit scheme. Guest -> host: we advertise `CONN_BUF_ALLOC`
//! and count in `fwd_cnt` only the bytes the host socket has accepted, so what the guest may have
//! in flight (and what we may have to hold in `tx_buf` while the host socket is full) never
//! exceeds `CONN_BUF_ALLOC`; a guest that sends past its credit is reset. Host -> guest: we read
//! from the host socket only as much as the guest's credit allows (`peer_buf_alloc` minus what is
//! in flight), straight into the guest's rx buffer, so nothing is buffered on that side.
//!
//! The connection never touches the queues or epoll itself: it answers "what is the next packet
//! for the guest" ([`Connection::next_rx`]), "what should epoll watch" ([`Connection::interest`])
//! and reacts to guest packets and host socket events.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::*;
use super::unix::send_nosignal;

/// Receive buffer we advertise to the guest, per connection (also the bound of `tx_buf`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// A connection is identified by its host-side port and its guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// Reset: only a pending RST (if any) is left to deliver, then the connection is dropped.
    Dead,
}

/// Control packets waiting for an rx buffer.
#[derive(Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    rst: bool,
    credit_update: bool,
    credit_request: bool,
    /// SHUTDOWN flags to announce (0 = none).
    shutdown: u32,
}

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    key: ConnKey,
    guest_cid: u64,
    state: ConnState,
    pending: Pending,

    // Guest -> host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest said SHUTDOWN with these flags.
    peer_shut: u32,
    host_write_shut: bool,

    // Host -> guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_request_sent: bool,
    /// Host socket may have data (or EOF) to read: set on EPOLLIN/EPOLLHUP, cleared on WouldBlock.
    host_readable: bool,
    host_eof: bool,
    /// Host peer closed both directions; the fd is no longer watched (EPOLLHUP can't be masked).
    host_hup: bool,

    /// Why it ended (logged when it is dropped).
    pub end: &'static str,

    /// Whether the muxer has this connection on its rx list.
    pub in_rxq: bool,
    /// What epoll currently watches for this fd (`None`: not registered).
    pub registered: Option<EventSet>,
}

impl Connection {
    /// A host process asked (CONNECT line) for the guest's `key.peer_port`.
    pub fn new_local(stream: UnixStream, key: ConnKey, guest_cid: u64) -> Self {
        let mut c = Self::new(stream, key, guest_cid, ConnState::LocalInit);
        c.pending.request = true;
        c
    }

    /// The guest's REQUEST `hdr` was accepted by the host socket `stream`.
    pub fn new_peer(stream: UnixStream, key: ConnKey, guest_cid: u64, hdr: &Header) -> Self {
        let mut c = Self::new(stream, key, guest_cid, ConnState::Established);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        c.pending.response = true;
        c
    }

    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: ConnState) -> Self {
        Self {
            stream,
            key,
            guest_cid,
            state,
            pending: Pending::default(),
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shut: 0,
            host_write_shut: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_request_sent: false,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            end: "",
            in_rxq: false,
            registered: None,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    #[cfg(test)]
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Nothing left to do: drop the connection (closing the host stream).
    pub fn is_finished(&self) -> bool {
        self.state == ConnState::Dead && !self.pending.rst
    }

    /// Resets the connection: the guest gets an RST, the host stream gets closed.
    pub fn kill(&mut self, why: &'static str) {
        if self.state != ConnState::Dead {
            self.state = ConnState::Dead;
            // The first cause is the one to tell.
            if self.end.is_empty() {
                self.end = why;
            }
            self.pending = Pending {
                rst: true,
                ..Default::default()
            };
            self.tx_buf.clear();
        }
    }

    /// Credit the guest currently grants us (bytes we may send it).
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest reporting nonsense (fwd_cnt ahead of what we sent) gets no credit from us.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_host_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shut & VSOCK_FLAGS_SHUTDOWN_RCV == 0
    }

    /// Whether [`Connection::next_rx`] would produce a packet.
    pub fn has_rx(&self) -> bool {
        let p = &self.pending;
        match self.state {
            ConnState::Dead => p.rst,
            ConnState::LocalInit => p.request,
            ConnState::Established => {
                p.response
                    || p.credit_update
                    || p.credit_request
                    || p.shutdown != 0
                    || (self.host_readable
                        && self.wants_host_data()
                        && (self.peer_credit() > 0 || !self.credit_request_sent))
            }
        }
    }

    /// The epoll interest for the host stream (`None`: must not be registered).
    pub fn interest(&self) -> Option<EventSet> {
        if self.host_hup {
            return None;
        }
        let mut set = EventSet::empty();
        if self.wants_host_data() && !self.host_readable && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if self.state == ConnState::Established && !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with up to `buf.len()` bytes of payload read into `buf`.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let (hdr, n) = self.next_rx_inner(buf)?;
        // Every packet carries our fwd_cnt, so the guest's view of its credit is now current.
        self.last_fwd_cnt_sent = hdr.fwd_cnt;
        self.pending.credit_update = false;
        Some((hdr, n))
    }

    fn next_rx_inner(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.pending.rst {
            self.pending.rst = false;
            return Some((self.header(VSOCK_OP_RST), 0));
        }
        match self.state {
            ConnState::Dead => return None,
            ConnState::LocalInit => {
                if self.pending.request {
                    self.pending.request = false;
                    return Some((self.header(VSOCK_OP_REQUEST), 0));
                }
                return None;
            }
            ConnState::Established => {}
        }
        if self.pending.response {
            self.pending.response = false;
            return Some((self.header(VSOCK_OP_RESPONSE), 0));
        }

        if self.host_readable && self.wants_host_data() {
            let credit = self.peer_credit();
            if credit == 0 {
                if !self.credit_request_sent {
                    self.credit_request_sent = true;
                    return Some((self.header(VSOCK_OP_CREDIT_REQUEST), 0));
                }
            } else if !buf.is_empty() {
                let max = buf.len().min(credit as usize);
                match (&self.stream).read(&mut buf[..max]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.host_readable = false;
                        // The host closed its write side (or everything, after a HUP).
                        self.pending.shutdown |= if self.host_hup {
                            VSOCK_FLAGS_SHUTDOWN_BOTH
                        } else {
                            VSOCK_FLAGS_SHUTDOWN_SEND
                        };
                    }
                    Ok(n) => {
                        self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                        let mut hdr = self.header(VSOCK_OP_RW);
                        hdr.len = n as u32;
                        return Some((hdr, n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(?self.key, "vsock: host read failed: {e}");
                        self.kill("host read failed");
                        return self.next_rx_inner(buf);
                    }
                }
            }
        }

        if self.pending.credit_request {
            self.pending.credit_request = false;
            return Some((self.header(VSOCK_OP_CREDIT_REQUEST), 0));
        }
        if self.pending.shutdown != 0 {
            let mut hdr = self.header(VSOCK_OP_SHUTDOWN);
            hdr.flags = std::mem::take(&mut self.pending.shutdown);
            return Some((hdr, 0));
        }
        if self.pending.credit_update {
            return Some((self.header(VSOCK_OP_CREDIT_UPDATE), 0));
        }
        None
    }

    /// A packet from the guest for this connection (cids, type and ports already matched).
    pub fn handle_guest_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if self.state == ConnState::Dead {
            return;
        }
        let had_credit = self.peer_credit() > 0;
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if !had_credit && self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }

        match (hdr.op, self.state) {
            (VSOCK_OP_RST, _) => {
                // The guest dropped the connection: no answer, just close the host side.
                self.state = ConnState::Dead;
                if self.end.is_empty() {
                    self.end = "guest reset";
                }
                self.pending = Pending::default();
            }
            (VSOCK_OP_RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                let ok = format!("OK {}\n", self.key.local_port);
                // A fresh socket has an empty send buffer: this short write can't be partial.
                match send_nosignal(&self.stream, ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {}
                    _ => self.kill("host gone before OK"),
                }
            }
            (VSOCK_OP_RW, ConnState::Established) => self.guest_data(data),
            (VSOCK_OP_CREDIT_UPDATE, ConnState::Established) => {}
            (VSOCK_OP_CREDIT_REQUEST, ConnState::Established) => self.pending.credit_update = true,
            (VSOCK_OP_SHUTDOWN, ConnState::Established) => {
                self.peer_shut |= hdr.flags & VSOCK_FLAGS_SHUTDOWN_BOTH;
                self.after_tx_progress();
            }
            // RW before the handshake, a second REQUEST, unknown ops: protocol error.
            (op, state) => {
                tracing::debug!(?self.key, op, ?state, "vsock: unexpected packet, resetting");
                self.kill("unexpected packet");
            }
        }
    }

    fn guest_data(&mut self, data: &[u8]) {
        if self.peer_shut & VSOCK_FLAGS_SHUTDOWN_SEND != 0 || self.host_hup {
            // Data after the guest's own SHUTDOWN(SEND), or nobody left to take it.
            self.kill("data after shutdown");
            return;
        }
        if self.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
            tracing::debug!(?self.key, "vsock: guest exceeded its credit, resetting");
            self.kill("guest exceeded its credit");
            return;
        }
        let mut data = data;
        if self.tx_buf.is_empty() {
            match send_nosignal(&self.stream, data) {
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(?self.key, "vsock: host write failed: {e}");
                    self.kill("host write failed");
                    return;
                }
            }
        }
        self.tx_buf.extend(data);
        self.after_tx_progress();
    }

    /// Writes as much of `tx_buf` to the host as it takes.
    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(?self.key, "vsock: host write failed: {e}");
                    self.kill("host write failed");
                    return;
                }
            }
        }
        self.after_tx_progress();
    }

    /// Shutdown and credit bookkeeping after bytes moved towards the host.
    fn after_tx_progress(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        if self.tx_buf.is_empty() {
            if self.peer_shut & VSOCK_FLAGS_SHUTDOWN_SEND != 0 && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            if self.peer_shut == VSOCK_FLAGS_SHUTDOWN_BOTH {
                // The guest closed its socket; Linux waits for our RST to finish the close.
                self.kill("guest shut down both ways");
                return;
            }
        }
        // What the guest believes it may still send: tell it about freed space before it stalls.
        let unacked = self
            .fwd_cnt
            .wrapping_add(self.tx_buf.len() as u32)
            .wrapping_sub(self.last_fwd_cnt_sent);
        let guest_view_free = CONN_BUF_ALLOC.saturating_sub(unacked);
        if self.fwd_cnt != self.last_fwd_cnt_sent && guest_view_free < CONN_BUF_ALLOC / 2 {
            self.pending.credit_update = true;
        }
    }

    /// Epoll reported `set` on the host stream.
    pub fn host_event(&mut self, set: EventSet) {
        if self.state == ConnState::Dead {
            if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                // Stop watching; the RST still pending will finish us.
                self.host_hup = true;
            }
            return;
        }
        if set.contains(EventSet::ERROR) {
            self.kill("host socket error");
            self.host_hup = true;
            return;
        }
        if set.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            if self.end.is_empty() {
                self.end = "host closed";
            }
            if self.state == ConnState::LocalInit {
                // The host gave up before the guest answered.
                self.kill("host gone before the guest answered");
                return;
            }
            // Nobody will read what the guest still sends; what the host wrote before closing is
            // still readable and goes to the guest before the SHUTDOWN.
            self.tx_buf.clear();
            if self.host_eof {
                self.pending.shutdown |= VSOCK_FLAGS_SHUTDOWN_BOTH;
            } else {
                self.host_readable = true;
            }
            return;
        }
        if set.contains(EventSet::IN) {
            self.host_readable = true;
        }
        if set.contains(EventSet::OUT) {
            self.flush_tx();
        }
    }
}

#[cfg(test)]
mod tests;
