//! Writes the seed corpora under fuzz/corpus/<target>/ (small, valid inputs a fuzzer starts
//! from): `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds`. Each structured
//! seed is checked to decode back to the value it was encoded from.

use std::fmt::Debug;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use vpod_fuzz::driver::{Addr, Buf, Desc, DriverOp, QueueSetup};
use vpod_fuzz::enc::{to_bytes, Enc};
use vpod_fuzz::vsock::{Cid, Hdr, Port, VOp};
use vpod_fuzz::{block, mem, mmio, net, oci, rng, vsock};

fn save<T>(target: &str, name: &str, v: &T)
where
    T: Enc + Debug + PartialEq + for<'a> Arbitrary<'a>,
{
    let bytes = to_bytes(v);
    let back = T::arbitrary_take_rest(Unstructured::new(&bytes)).expect("decodes");
    assert_eq!(&back, v, "{target}/{name} does not round-trip");
    write(target, name, &bytes);
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn buf(off: u16, len: u16, write: bool) -> Buf {
    Buf {
        addr: Addr::Data(off),
        len,
        write,
    }
}

fn q(size_log2: u8) -> QueueSetup {
    QueueSetup { size_log2 }
}

fn mem_seeds() {
    let req = |ty, block, nb, answer| mem::Op::Request {
        ty,
        block,
        nb,
        raw: None,
        answer,
    };
    save(
        "mem",
        "plug-state-unplug",
        &mem::Input {
            queue: q(4),
            ops: vec![
                mem::Op::Resize { blocks: 8 },
                req(0, 0, 4, true),
                req(3, 0, 8, true),
                req(1, 2, 1, true),
                req(0, 4, 8, true),
                req(2, 0, 0, true),
            ],
        },
    );
    save(
        "mem",
        "no-answer-room-and-raw",
        &mem::Input {
            queue: q(2),
            ops: vec![
                mem::Op::Resize { blocks: 128 },
                req(0, 127, 1, false),
                mem::Op::Request {
                    ty: 0,
                    block: 0,
                    nb: 65535,
                    raw: Some(u64::MAX - 4095),
                    answer: true,
                },
                mem::Op::Driver(DriverOp::AvailIdx { q: 0, idx: 300 }),
                mem::Op::Driver(DriverOp::Kick { q: 0 }),
            ],
        },
    );
}

fn rng_seeds() {
    let kick = DriverOp::Kick { q: 0 };
    let chain = |bufs| DriverOp::Chain { q: 0, bufs };
    save(
        "rng",
        "two-buffers",
        &rng::Input {
            queue: q(4),
            ops: vec![
                chain(vec![buf(0, 64, true), buf(16, 512, true)]),
                kick.clone(),
            ],
        },
    );
    save(
        "rng",
        "readable-and-indirect",
        &rng::Input {
            queue: q(3),
            ops: vec![
                chain(vec![buf(0, 16, false)]),
                DriverOp::Indirect {
                    q: 0,
                    table: Addr::Data(512),
                    bufs: vec![buf(0, 32, true)],
                },
                kick.clone(),
            ],
        },
    );
    save(
        "rng",
        "loop-and-bad-index",
        &rng::Input {
            queue: q(2),
            ops: vec![
                DriverOp::Desc {
                    q: 0,
                    index: 0,
                    desc: Desc {
                        addr: Addr::Data(0),
                        len: 8,
                        flags: 3,
                        next: 0,
                    },
                },
                DriverOp::Publish { q: 0, head: 0 },
                kick.clone(),
                DriverOp::AvailIdx { q: 0, idx: 9 },
                kick,
            ],
        },
    );
}

fn block_seeds() {
    let req = |kind, sector, data: Vec<Buf>| block::Op::Request {
        kind,
        sector,
        data,
        status: true,
    };
    let input = |ops| block::Input {
        read_only: false,
        sectors: 8,
        tail: 0,
        features: u64::MAX,
        queue: q(4),
        ops,
    };
    save(
        "block",
        "read",
        &input(vec![req(block::Kind::In, 1, vec![buf(0, 1024, true)])]),
    );
    save(
        "block",
        "write-then-read",
        &input(vec![
            block::Op::Driver(DriverOp::Write {
                addr: Addr::Data(0),
                data: b"vpod".repeat(4),
            }),
            req(block::Kind::Out, 2, vec![buf(0, 512, false)]),
            req(
                block::Kind::In,
                2,
                vec![buf(64, 256, true), buf(128, 256, true)],
            ),
        ]),
    );
    save(
        "block",
        "flush-getid-bad",
        &input(vec![
            req(block::Kind::Flush, 0, vec![]),
            req(block::Kind::GetId, 0, vec![buf(0, 20, true)]),
            req(block::Kind::In, 7, vec![buf(0, 1024, true)]),
            req(block::Kind::Other(99), 0, vec![]),
        ]),
    );
}

fn net_seeds() {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 1, 2, 3, 0x88, 0xb5]);
    frame.resize(60, 0x5a);
    save(
        "net",
        "tx-frame",
        &net::Input {
            features: u64::MAX,
            queues: [q(4), q(4)],
            ops: vec![
                // virtio_net_hdr_v1 (all zero: no offloads) at Data(0), the frame at Data(2).
                net::Op::Driver(DriverOp::Write {
                    addr: Addr::Data(0),
                    data: vec![0; 12],
                }),
                net::Op::Driver(DriverOp::Write {
                    addr: Addr::Data(2),
                    data: frame.clone(),
                }),
                net::Op::Driver(DriverOp::Chain {
                    q: 1,
                    bufs: vec![buf(0, 12, false), buf(2, 60, false)],
                }),
                net::Op::Driver(DriverOp::Kick { q: 1 }),
            ],
        },
    );
    save(
        "net",
        "rx-frame",
        &net::Input {
            features: 1 << 32,
            queues: [q(4), q(4)],
            ops: vec![
                net::Op::Driver(DriverOp::Chain {
                    q: 0,
                    bufs: vec![buf(0, 1526, true)],
                }),
                net::Op::Driver(DriverOp::Kick { q: 0 }),
                net::Op::HostFrame(frame.clone()),
                net::Op::HostFrame(frame),
                net::Op::Driver(DriverOp::Chain {
                    q: 0,
                    bufs: vec![buf(512, 16, true)],
                }),
                net::Op::Driver(DriverOp::Kick { q: 0 }),
            ],
        },
    );
}

fn from_guest(op: VOp, src_port: u32, dst_port: Port) -> Hdr {
    Hdr {
        src_cid: Cid::Guest,
        dst_cid: Cid::Host,
        src_port,
        dst_port,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
        len: None,
        type_: None,
    }
}

fn vsock_seeds() {
    use vsock::Op::*;
    let queues = [q(6), q(6), q(3)];
    save(
        "vsock",
        "host-connects",
        &vsock::Input {
            queues,
            ops: vec![
                RxBufs {
                    n: 3,
                    data_len: 4096,
                },
                HostConnect {
                    port: 1234,
                    extra: vec![],
                },
                Tx {
                    hdr: from_guest(VOp::Response, 1234, Port::Local(0)),
                    data: vec![],
                },
                HostRead { peer: 0 },
                HostWrite {
                    peer: 0,
                    data: b"hello from host".to_vec(),
                },
                Tx {
                    hdr: from_guest(VOp::Rw, 1234, Port::Local(0)),
                    data: b"hi".to_vec(),
                },
                HostRead { peer: 0 },
                HostShutdown {
                    peer: 0,
                    write_only: true,
                },
                Tx {
                    hdr: from_guest(VOp::Shutdown, 1234, Port::Local(0)),
                    data: vec![],
                },
                HostClose { peer: 0 },
            ],
        },
    );
    save(
        "vsock",
        "guest-connects",
        &vsock::Input {
            queues,
            ops: vec![
                RxBufs {
                    n: 3,
                    data_len: 4096,
                },
                Tx {
                    hdr: from_guest(VOp::Request, 5000, Port::Listen),
                    data: vec![],
                },
                Accept,
                HostWrite {
                    peer: 0,
                    data: b"from the host listener".to_vec(),
                },
                Tx {
                    hdr: from_guest(VOp::CreditRequest, 5000, Port::Listen),
                    data: vec![],
                },
                Tx {
                    hdr: from_guest(VOp::Rw, 5000, Port::Listen),
                    data: b"ping".to_vec(),
                },
                HostRead { peer: 0 },
                Tx {
                    hdr: from_guest(VOp::Rst, 5000, Port::Listen),
                    data: vec![],
                },
            ],
        },
    );
    save(
        "vsock",
        "junk",
        &vsock::Input {
            queues,
            ops: vec![
                HostRaw(b"CONNECT x\n".to_vec()),
                HostRaw(b"CONNECT 99999999999999999999\n".to_vec()),
                RxBufs { n: 0, data_len: 0 },
                HostConnect {
                    port: 7,
                    extra: b"early data".to_vec(),
                },
                Tx {
                    hdr: from_guest(VOp::Rw, 1, Port::Raw(2)),
                    data: vec![1, 2, 3],
                },
            ],
        },
    );
}

fn mmio_seeds() {
    use mmio::Op::*;
    let ops = |q0: u8| {
        vec![
            Read {
                offset: 0,
                width: 2,
            },
            Read {
                offset: 0x100,
                width: 2,
            },
            Handshake { features: 0 },
            Queue { q: 0, setup: q(q0) },
            DriverOk,
            Driver(DriverOp::Chain {
                q: 0,
                bufs: vec![buf(0, 64, true)],
            }),
            Driver(DriverOp::Kick { q: 0 }),
            Read {
                offset: 0x60,
                width: 2,
            },
            Write {
                offset: 0x64,
                width: 2,
                value: 1,
            },
            Reset,
        ]
    };
    save(
        "mmio",
        "rng",
        &mmio::Input {
            device: mmio::Device::Rng,
            ops: ops(4),
        },
    );
    save(
        "mmio",
        "block",
        &mmio::Input {
            device: mmio::Device::Block { read_only: true },
            ops: ops(3),
        },
    );
}

fn oci_seeds() {
    let root = oci::ROOT;
    let spec = format!(
        r#"{{"ociVersion":"1.0.2",
"annotations":{{"io.kubernetes.cri.sandbox-uid":"uid1","io.kubernetes.cri.sandbox-id":"sid1"}},
"process":{{"user":{{"uid":1000,"gid":1000}},"args":["sh","-c","echo hi"],"env":["PATH=/bin"],"cwd":"/",
"rlimits":[{{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}}],"noNewPrivileges":true}},
"root":{{"path":"rootfs","readonly":true}},"hostname":"web-0",
"mounts":[
{{"destination":"/proc","type":"proc","source":"proc"}},
{{"destination":"/etc/secret","type":"bind","source":"{root}/kubelet/pods/uid1/volumes/kubernetes.io~secret/token","options":["rbind","ro"]}},
{{"destination":"/etc/cfg","type":"bind","source":"{root}/kubelet/pods/uid1/volumes/kubernetes.io~configmap/cfg","options":["rbind","ro"]}},
{{"destination":"/cache","type":"bind","source":"{root}/kubelet/pods/uid1/volumes/kubernetes.io~empty-dir/cache","options":["rbind"]}},
{{"destination":"/etc/hosts","type":"bind","source":"{root}/kubelet/pods/uid1/etc-hosts","options":["rbind"]}},
{{"destination":"/etc/resolv.conf","type":"bind","source":"{root}/containerd/io.containerd.grpc.v1.cri/sandboxes/sid1/resolv.conf","options":["rbind","ro"]}},
{{"destination":"/dev/termination-log","type":"bind","source":"{root}/kubelet/pods/uid1/containers/app/0a1b2c3d","options":["rbind"]}}],
"linux":{{"resources":{{"memory":{{"limit":67108864}},"cpu":{{"quota":50000,"period":100000,"shares":512}},"pids":{{"limit":100}}}},
"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}},{{"type":"network","path":"/var/run/netns/cni-1"}}],
"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"seccomp":{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":["read","clone"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}}]}}]}}}}}}"#
    );
    write("oci", "pod-container.json", spec.as_bytes());
    let minimal = r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"network"}]}}"#;
    write("oci", "minimal.json", minimal.as_bytes());
    let refused = r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"mounts":[{"destination":"/host","type":"bind","source":"/etc","options":["rbind"]}],"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]}}"#;
    write("oci", "refused.json", refused.as_bytes());
}

fn unpack_seeds() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    dir(&mut b, "etc/");
    dir(&mut b, "bin/");
    h.set_mode(0o644);
    h.set_size(6);
    b.append_data(&mut h, "etc/hostname", &b"vpod!\n"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_size(4);
    b.append_data(&mut h, "bin/su", &b"\x7fELF"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "etc/hostname2", "etc/hostname")
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    b.append_data(&mut h, "etc/.wh.old", std::io::empty())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "null", std::io::empty()).unwrap();
    let layer = b.into_inner().unwrap();
    write("unpack", "layer.tar", &layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &layer).unwrap();
    write("unpack", "layer.tar.gz", &gz.finish().unwrap());
    // An escape attempt: a symlink out, then a file through it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "up", "../..").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "up/escaped", &b"x\n"[..]).unwrap();
    write("unpack", "escape.tar", &b.into_inner().unwrap());
}

fn main() {
    rng_seeds();
    mem_seeds();
    block_seeds();
    net_seeds();
    vsock_seeds();
    mmio_seeds();
    oci_seeds();
    unpack_seeds();
}
