//! Encodes inputs into the bytes `arbitrary` 1.x decodes them from, so that seed corpora can
//! be written from readable structures (`examples/seeds.rs`, which checks each seed decodes
//! back to what it encoded). The format: integers little-endian, bool one byte, an enum
//! variant `i` of `n` as a u32 `v` with `(v * n) >> 32 == i`, `Option` a bool then the value,
//! a `Vec` each element after a `true` byte, then a `false` byte.

use crate::driver::{Addr, Buf, Desc, DriverOp, QueueSetup};
use crate::{block, mem, mmio, net, rng, vsock};

pub trait Enc {
    fn enc(&self, out: &mut Vec<u8>);
}

pub fn to_bytes(v: &impl Enc) -> Vec<u8> {
    let mut out = Vec::new();
    v.enc(&mut out);
    out
}

fn variant(out: &mut Vec<u8>, i: u64, n: u64) {
    let v = ((i << 32).div_ceil(n)) as u32;
    debug_assert_eq!((u64::from(v) * n) >> 32, i);
    v.enc(out);
}

macro_rules! ints {
    ($($t:ty)*) => {$(
        impl Enc for $t {
            fn enc(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
ints!(u8 u16 u32 u64);

impl Enc for bool {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Enc> Enc for Vec<T> {
    fn enc(&self, out: &mut Vec<u8>) {
        for x in self {
            out.push(1);
            x.enc(out);
        }
        out.push(0);
    }
}

impl<T: Enc, const N: usize> Enc for [T; N] {
    fn enc(&self, out: &mut Vec<u8>) {
        self.iter().for_each(|x| x.enc(out));
    }
}

impl<T: Enc> Enc for Option<T> {
    fn enc(&self, out: &mut Vec<u8>) {
        self.is_some().enc(out);
        if let Some(x) = self {
            x.enc(out);
        }
    }
}

/// Encodes each listed value in order.
macro_rules! fields {
    ($out:expr; $($f:expr),*) => {{ $( $f.enc($out); )* }};
}

impl Enc for Addr {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            Addr::Data(x) => fields!(out; variant(out, 0, 4), x),
            Addr::Ring(x) => fields!(out; variant(out, 1, 4), x),
            Addr::Edge(x) => fields!(out; variant(out, 2, 4), x),
            Addr::Raw(x) => fields!(out; variant(out, 3, 4), x),
        }
    }
}

// `variant(..)` returns (), whose Enc is nothing.
impl Enc for () {
    fn enc(&self, _: &mut Vec<u8>) {}
}

impl Enc for Buf {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.addr, self.len, self.write);
    }
}

impl Enc for Desc {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.addr, self.len, self.flags, self.next);
    }
}

impl Enc for QueueSetup {
    fn enc(&self, out: &mut Vec<u8>) {
        self.size_log2.enc(out);
    }
}

impl Enc for DriverOp {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 10;
        match self {
            DriverOp::Desc { q, index, desc } => fields!(out; variant(out, 0, N), q, index, desc),
            DriverOp::Chain { q, bufs } => fields!(out; variant(out, 1, N), q, bufs),
            DriverOp::Indirect { q, table, bufs } => {
                fields!(out; variant(out, 2, N), q, table, bufs)
            }
            DriverOp::Publish { q, head } => fields!(out; variant(out, 3, N), q, head),
            DriverOp::AvailIdx { q, idx } => fields!(out; variant(out, 4, N), q, idx),
            DriverOp::AvailFlags { q, flags } => fields!(out; variant(out, 5, N), q, flags),
            DriverOp::UsedEvent { q, idx } => fields!(out; variant(out, 6, N), q, idx),
            DriverOp::Write { addr, data } => fields!(out; variant(out, 7, N), addr, data),
            DriverOp::Kick { q } => fields!(out; variant(out, 8, N), q),
            DriverOp::Run => variant(out, 9, N),
        }
    }
}

impl Enc for rng::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.queue, self.ops);
    }
}

impl Enc for mem::Op {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            mem::Op::Driver(op) => fields!(out; variant(out, 0, 3), op),
            mem::Op::Request {
                ty,
                block,
                nb,
                raw,
                answer,
            } => fields!(out; variant(out, 1, 3), ty, block, nb, raw, answer),
            mem::Op::Resize { blocks } => fields!(out; variant(out, 2, 3), blocks),
        }
    }
}

impl Enc for mem::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.queue, self.ops);
    }
}

impl Enc for block::Kind {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            block::Kind::In => variant(out, 0, 5),
            block::Kind::Out => variant(out, 1, 5),
            block::Kind::Flush => variant(out, 2, 5),
            block::Kind::GetId => variant(out, 3, 5),
            block::Kind::Other(t) => fields!(out; variant(out, 4, 5), t),
        }
    }
}

impl Enc for block::Op {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            block::Op::Driver(op) => fields!(out; variant(out, 0, 2), op),
            block::Op::Request {
                kind,
                sector,
                data,
                status,
            } => fields!(out; variant(out, 1, 2), kind, sector, data, status),
        }
    }
}

impl Enc for block::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.read_only, self.sectors, self.tail, self.features, self.queue, self.ops);
    }
}

impl Enc for net::Op {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            net::Op::Driver(op) => fields!(out; variant(out, 0, 2), op),
            net::Op::HostFrame(f) => fields!(out; variant(out, 1, 2), f),
        }
    }
}

impl Enc for net::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.features, self.queues, self.ops);
    }
}

impl Enc for vsock::Cid {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            vsock::Cid::Guest => variant(out, 0, 3),
            vsock::Cid::Host => variant(out, 1, 3),
            vsock::Cid::Raw(c) => fields!(out; variant(out, 2, 3), c),
        }
    }
}

impl Enc for vsock::Port {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            vsock::Port::Listen => variant(out, 0, 3),
            vsock::Port::Local(n) => fields!(out; variant(out, 1, 3), n),
            vsock::Port::Raw(p) => fields!(out; variant(out, 2, 3), p),
        }
    }
}

impl Enc for vsock::VOp {
    fn enc(&self, out: &mut Vec<u8>) {
        use vsock::VOp::*;
        let i = match self {
            Request => 0,
            Response => 1,
            Rst => 2,
            Shutdown => 3,
            Rw => 4,
            CreditUpdate => 5,
            CreditRequest => 6,
            Raw(_) => 7,
        };
        variant(out, i, 8);
        if let Raw(op) = self {
            op.enc(out);
        }
    }
}

impl Enc for vsock::Hdr {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.op,
            self.flags, self.buf_alloc, self.fwd_cnt, self.len, self.type_);
    }
}

impl Enc for vsock::Op {
    fn enc(&self, out: &mut Vec<u8>) {
        use vsock::Op::*;
        const N: u64 = 10;
        match self {
            Driver(op) => fields!(out; variant(out, 0, N), op),
            Tx { hdr, data } => fields!(out; variant(out, 1, N), hdr, data),
            RxBufs { n, data_len } => fields!(out; variant(out, 2, N), n, data_len),
            HostConnect { port, extra } => fields!(out; variant(out, 3, N), port, extra),
            HostRaw(b) => fields!(out; variant(out, 4, N), b),
            HostWrite { peer, data } => fields!(out; variant(out, 5, N), peer, data),
            HostRead { peer } => fields!(out; variant(out, 6, N), peer),
            HostShutdown { peer, write_only } => {
                fields!(out; variant(out, 7, N), peer, write_only)
            }
            HostClose { peer } => fields!(out; variant(out, 8, N), peer),
            Accept => variant(out, 9, N),
        }
    }
}

impl Enc for vsock::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.queues, self.ops);
    }
}

impl Enc for mmio::Device {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            mmio::Device::Rng => variant(out, 0, 2),
            mmio::Device::Block { read_only } => fields!(out; variant(out, 1, 2), read_only),
        }
    }
}

impl Enc for mmio::Op {
    fn enc(&self, out: &mut Vec<u8>) {
        use mmio::Op::*;
        const N: u64 = 7;
        match self {
            Read { offset, width } => fields!(out; variant(out, 0, N), offset, width),
            Write {
                offset,
                width,
                value,
            } => fields!(out; variant(out, 1, N), offset, width, value),
            Handshake { features } => fields!(out; variant(out, 2, N), features),
            Queue { q, setup } => fields!(out; variant(out, 3, N), q, setup),
            DriverOk => variant(out, 4, N),
            Reset => variant(out, 5, N),
            Driver(op) => fields!(out; variant(out, 6, N), op),
        }
    }
}

impl Enc for mmio::Input {
    fn enc(&self, out: &mut Vec<u8>) {
        fields!(out; self.device, self.ops);
    }
}
