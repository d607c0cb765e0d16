//! The shim under Debian's containerd 1.6, on real microVMs (test bed):
//! `ctr run --runtime io.containerd.vpod.v2` of a locally imported image.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vpod_test_support as images;

use images::containerd::Containerd;
use images::output_text as text;

const NS: &str = "vpodtest";

fn start(name: &str) -> Containerd {
    Containerd::start(
        name,
        Path::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2")),
        false,
    )
}

fn import_busybox(c: &Containerd, name: &str) {
    c.import_busybox(
        NS,
        name,
        vec![images::Entry::File(
            "etc/hello".into(),
            b"hello from the image\n".to_vec(),
            0o644,
        )],
        serde_json::json!({"Cmd": ["sh"]}),
    );
}

/// `ctr` in the test namespace.
fn ctr(c: &Containerd, args: &[&str]) -> Output {
    c.ctr(NS, args)
}

/// `ctr run` on the vpod runtime with the test's shim config.
fn ctr_run(c: &Containerd, args: &[&str]) -> Output {
    let config = c.shim_config();
    let mut all = vec![
        "run",
        "--runtime",
        "io.containerd.vpod.v2",
        "--runtime-config-path",
        config.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    ctr(c, &all)
}

fn assert_no_shims(c: &Containerd) {
    if let Err(left) = c.wait_no_shims(Duration::from_secs(30)) {
        panic!("shims left running: {left:?}");
    }
}

#[test]
fn ctr_run_prints_the_output_of_a_container_in_a_microvm() {
    let c = start("ctr");
    let image = "docker.io/library/vpod-busybox:1";
    import_busybox(&c, image);
    let o = ctr_run(
        &c,
        &[
            "--rm",
            image,
            "c1",
            "sh",
            "-c",
            "cat /etc/hello; echo kernel=$(uname -r); exit 3",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("hello from the image"),
        "{}\n{}",
        text(&o),
        c.log()
    );
    assert!(
        out.contains("kernel=6.1"),
        "runs on the guest kernel: {}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o), c.log());
    assert_no_shims(&c);
    let left = c.shim_state_left();
    assert!(left.is_empty(), "pod state left: {left:?}");
}

#[test]
fn ctr_task_exec_runs_in_the_container_and_kill_ends_it() {
    let c = start("exec");
    let image = "docker.io/library/vpod-busybox:1";
    import_busybox(&c, image);
    let o = ctr_run(
        &c,
        &[
            "-d",
            image,
            "c2",
            "sh",
            "-c",
            "echo here > /tmp/marker; trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    let t0 = Instant::now();
    let e = loop {
        let e = ctr(
            &c,
            &[
                "task",
                "exec",
                "--exec-id",
                "e1",
                "c2",
                "sh",
                "-c",
                "cat /tmp/marker; exit 5",
            ],
        );
        if String::from_utf8_lossy(&e.stdout).contains("here")
            || t0.elapsed() > Duration::from_secs(30)
        {
            break e;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        String::from_utf8_lossy(&e.stdout),
        "here\n",
        "{}\n{}",
        text(&e),
        c.log()
    );
    assert_eq!(e.status.code(), Some(5), "{}", text(&e));
    // Metrics come from the container's cgroup in the guest.
    let m = ctr(&c, &["task", "metrics", "c2"]);
    assert!(m.status.success(), "{}\n{}", text(&m), c.log());
    let mt = String::from_utf8_lossy(&m.stdout).into_owned();
    assert!(mt.contains("memory.usage_in_bytes"), "{}", text(&m));
    let k = ctr(&c, &["task", "kill", "c2"]);
    assert!(k.status.success(), "{}", text(&k));
    let t0 = Instant::now();
    loop {
        let d = ctr(&c, &["task", "delete", "c2"]);
        if d.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "delete: {}",
            text(&d)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let d = ctr(&c, &["container", "delete", "c2"]);
    assert!(d.status.success(), "{}", text(&d));
    assert_no_shims(&c);
}

/// A netns made the way CNI's bridge plugin would (veth, address, default
/// route); removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 100_000;
        let n = Netns {
            name: format!("vpodnet{id}"),
            host_if: format!("vh{id}"),
        };
        let sh = |s: String| {
            let st = Command::new("sh").arg("-c").arg(&s).status().unwrap();
            assert!(st.success(), "host setup failed: {s}");
        };
        sh(format!("ip netns add {}", n.name));
        sh(format!(
            "ip link add {h} type veth peer name eth0 netns {ns} && ip addr add 10.88.77.1/24 dev {h} \
             && ip link set {h} up && ip -n {ns} addr add 10.88.77.2/24 dev eth0 \
             && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up \
             && ip -n {ns} route add default via 10.88.77.1",
            h = n.host_if,
            ns = n.name
        ));
        n
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

#[test]
fn the_pod_ip_in_its_cni_netns_reaches_the_guest() {
    let c = start("net");
    let image = "docker.io/library/vpod-busybox:1";
    import_busybox(&c, image);
    let ns = Netns::new();
    let with_ns = format!("network:{}", ns.path());
    let o = ctr_run(
        &c,
        &[
            "-d",
            "--with-ns",
            &with_ns,
            image,
            "c3",
            "sh",
            "-c",
            "while true; do nc -l -p 8080 -e echo pod-ip-ok; done",
        ],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    // The host reaches the pod's IP (the veth's, moved into the guest).
    let t0 = Instant::now();
    loop {
        let r = Command::new("busybox")
            .args(["nc", "-w", "3", "10.88.77.2", "8080"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&r.stdout).contains("pod-ip-ok") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let sh = |cmd: String| {
                let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
                format!("$ {cmd}\n{}", text(&o))
            };
            let guest = ctr(
                &c,
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    "dbg",
                    "c3",
                    "sh",
                    "-c",
                    "ip addr; ip route; cat /proc/net/dev",
                ],
            );
            panic!(
                "pod IP unreachable: {}\n{}\n{}\n{}\nguest:\n{}",
                text(&r),
                sh(format!("ip -n {} -d link; ip -n {} addr", ns.name, ns.name)),
                sh(format!("tc -n {} filter show dev eth0 ingress; tc -n {} filter show dev vpod0 ingress; tc -n {} -s qdisc", ns.name, ns.name, ns.name)),
                sh("ip addr; ip neigh".into()),
                text(&guest),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tap = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "vpod0"])
        .output()
        .unwrap();
    assert!(tap.status.success(), "the tap lives in the pod's netns");
    let k = ctr(&c, &["task", "kill", "-s", "SIGKILL", "c3"]);
    assert!(k.status.success(), "{}", text(&k));
    let t0 = Instant::now();
    while !ctr(&c, &["task", "delete", "c3"]).status.success() {
        assert!(t0.elapsed() < Duration::from_secs(30), "task delete");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(ctr(&c, &["container", "delete", "c3"]).status.success());
    assert_no_shims(&c);
    let tap = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "vpod0"])
        .output()
        .unwrap();
    assert!(!tap.status.success(), "the tap went with the VM");
}

#[test]
fn ctr_run_stdin_reaches_the_container_and_its_end_closes_it() {
    let c = start("stdin");
    let image = "docker.io/library/vpod-busybox:1";
    import_busybox(&c, image);
    let config = c.shim_config();
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(c.sock())
        .args(["--namespace", NS, "run", "--rm"])
        .args([
            "--runtime",
            "io.containerd.vpod.v2",
            "--runtime-config-path",
        ])
        .arg(&config)
        .args([
            image,
            "c4",
            "sh",
            "-c",
            "read l; echo got:$l; wc -l; echo end",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"first\nsecond\nthird\n").unwrap();
        // Dropped here: ctr sees EOF and calls CloseIO.
    }
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("ctr run did not end: {}\n{}", text(&o), c.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "got:first\n2\nend\n",
        "{}\n{}",
        text(&o),
        c.log()
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_no_shims(&c);
}
