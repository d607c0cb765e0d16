//! The shim under Debian's containerd 1.6, on real microVMs (test bed):
//! `ctr run --runtime io.containerd.vpod.v2` of a locally imported image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vpod_test_support as images;

struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(name: &str) -> Containerd {
        let dir = std::env::temp_dir().join(format!("vpod-ctrd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The overlayfs snapshotter needs a real upper filesystem: not the
        // test bed's overlay root.
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[debug]
  level = "debug"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("VPOD_KERNEL", images::guest_file("vmlinux"))
            .env("VPOD_INITRD", images::guest_file("initramfs.cpio"))
            .env("VPOD_SHIM_STATE", dir.join("shim"))
            .env("VPOD_SHIM_ROOTFS_CACHE", dir.join("rootfs-cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd { dir, child };
        let t0 = Instant::now();
        while !c.sock().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(["--namespace", "vpodtest"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Imports a busybox image as `name`.
    fn import_busybox(&self, name: &str) {
        let layout = self.dir.join("layout");
        let layer = images::busybox_layer(vec![images::Entry::File(
            "etc/hello".into(),
            b"hello from the image\n".to_vec(),
            0o644,
        )]);
        images::layout(&layout, &[layer], serde_json::json!({"Cmd": ["sh"]}));
        // Name it the way `ctr image import` reads names from an OCI archive.
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]["annotations"] = serde_json::json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": "1",
        });
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let tar = self.dir.join("image.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}\n{}", text(&o), self.log());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kept for a look after a failure (the dir is a tmpfs that goes).
        let _ = std::fs::copy(
            self.dir.join("containerd.log"),
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "{}.log",
                self.dir.file_name().unwrap().to_string_lossy()
            )),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use images::output_text as text;

/// Shims of this test process's containerd instances (tests run in parallel).
fn shim_processes_of(c: &Containerd) -> Vec<String> {
    let sock = c.sock();
    shim_processes()
        .into_iter()
        .filter(|p| p.contains(sock.to_str().unwrap()))
        .collect()
}

fn shim_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains("containerd-shim-vpod-v2") {
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn ctr_run_prints_the_output_of_a_container_in_a_microvm() {
    let c = Containerd::start("ctr");
    let image = "docker.io/library/vpod-busybox:1";
    c.import_busybox(image);
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.vpod.v2",
        image,
        "c1",
        "sh",
        "-c",
        "cat /etc/hello; echo kernel=$(uname -r); exit 3",
    ]);
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
    let t0 = Instant::now();
    while !shim_processes_of(&c).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "shim left running: {:?}",
            shim_processes_of(&c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<_> = std::fs::read_dir(c.dir.join("shim"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pod state left: {left:?}");
    let _: &Path = &c.dir;
}

#[test]
fn ctr_task_exec_runs_in_the_container_and_kill_ends_it() {
    let c = Containerd::start("exec");
    let image = "docker.io/library/vpod-busybox:1";
    c.import_busybox(image);
    let o = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.vpod.v2",
        image,
        "c2",
        "sh",
        "-c",
        "echo here > /tmp/marker; trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), c.log());
    let t0 = Instant::now();
    let e = loop {
        let e = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "c2",
            "sh",
            "-c",
            "cat /tmp/marker; exit 5",
        ]);
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
    let m = c.ctr(&["task", "metrics", "c2"]);
    assert!(m.status.success(), "{}\n{}", text(&m), c.log());
    let mt = String::from_utf8_lossy(&m.stdout).into_owned();
    assert!(mt.contains("memory.usage_in_bytes"), "{}", text(&m));
    let k = c.ctr(&["task", "kill", "c2"]);
    assert!(k.status.success(), "{}", text(&k));
    let t0 = Instant::now();
    loop {
        let d = c.ctr(&["task", "delete", "c2"]);
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
    let d = c.ctr(&["container", "delete", "c2"]);
    assert!(d.status.success(), "{}", text(&d));
    let t0 = Instant::now();
    while !shim_processes_of(&c).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "shim left: {:?}",
            shim_processes_of(&c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let c = Containerd::start("net");
    let image = "docker.io/library/vpod-busybox:1";
    c.import_busybox(image);
    let ns = Netns::new();
    let with_ns = format!("network:{}", ns.path());
    let o = c.ctr(&[
        "run",
        "-d",
        "--with-ns",
        &with_ns,
        "--runtime",
        "io.containerd.vpod.v2",
        image,
        "c3",
        "sh",
        "-c",
        "while true; do nc -l -p 8080 -e echo pod-ip-ok; done",
    ]);
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
            let guest = c.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "dbg",
                "c3",
                "sh",
                "-c",
                "ip addr; ip route; cat /proc/net/dev",
            ]);
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
    let k = c.ctr(&["task", "kill", "-s", "SIGKILL", "c3"]);
    assert!(k.status.success(), "{}", text(&k));
    let t0 = Instant::now();
    while !c.ctr(&["task", "delete", "c3"]).status.success() {
        assert!(t0.elapsed() < Duration::from_secs(30), "task delete");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(c.ctr(&["container", "delete", "c3"]).status.success());
    let t0 = Instant::now();
    while !shim_processes_of(&c).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "shim left");
        std::thread::sleep(Duration::from_millis(200));
    }
    let tap = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "vpod0"])
        .output()
        .unwrap();
    assert!(!tap.status.success(), "the tap went with the VM");
}
