//! A private containerd for tests and benchmarks: Debian's containerd 1.6
//! with its own root, state dir and socket on a tmpfs, the vpod shim on its
//! PATH, and (for CRI) runc beside it plus a CNI bridge + host-local
//! network on a private range.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::{busybox_layer, guest_file, layout, output_text, Entry};

/// containerd's namespace for CRI objects.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The sandbox (pause) image the CRI config names; [`Containerd::start`]
/// imports it.
pub const PAUSE_IMAGE: &str = "registry.local/vpod-test/pause:1";
/// CRI runtime handler of vpod's shim, as the config defines it.
pub const VPOD: &str = "vpod";
/// CRI runtime handler of runc, as the config defines it (to compare with).
pub const RUNC: &str = "runc";

/// Instances of this process so far: each gets its own bridge and /24.
static INSTANCES: AtomicU8 = AtomicU8::new(0);

/// A private containerd (its own socket, state and config under a temp dir), killed and removed
/// when dropped.
#[derive(Debug)]
pub struct Containerd {
    /// Its temp dir: socket, config, state, log.
    pub dir: PathBuf,
    child: Child,
    /// The CNI bridge, when CRI is on.
    bridge: Option<String>,
    /// The third octet of this instance's 10.89.x.0/24 pod range.
    pub subnet: u8,
}

impl Containerd {
    /// Starts containerd with the shim binary `shim` on its PATH; `cri`
    /// turns on the CRI plugin with runtimes `vpod` and `runc` and a CNI
    /// bridge network.
    pub fn start(name: &str, shim: &Path, cri: bool) -> Containerd {
        let subnet = 10 + INSTANCES.fetch_add(1, Ordering::Relaxed);
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
        assert!(st.success(), "mount a tmpfs on {}", dir.display());
        let d = dir.display();
        std::fs::write(
            dir.join("vpod-shim.toml"),
            format!(
                "kernel = \"{}\"\ninitrd = \"{}\"\nstate_dir = \"{d}/shim\"\n\
                 rootfs_cache = \"{d}/rootfs-cache\"\nkubelet_root = \"{d}/kubelet\"\n\
                 ephemeral_dir = \"{d}/shim-ephemeral\"\n\
                 containerd_dirs = [\"{d}/root\", \"{d}/state\"]\n{}",
                guest_file("vmlinux").display(),
                guest_file("initramfs.cpio").display(),
                // Benchmarks compare settings with it (`hotplug_memory_mib = 0`).
                std::env::var("VPOD_TEST_SHIM_CONFIG").unwrap_or_default(),
            ),
        )
        .unwrap();
        let disabled = if cri {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        let mut config = format!(
            r#"version = 2
{disabled}root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
"#
        );
        let bridge = cri.then(|| format!("vpbr{subnet}"));
        if let Some(bridge) = &bridge {
            config += &format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{RUNC}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC}]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{VPOD}]
      runtime_type = "io.containerd.vpod.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{VPOD}.options]
        ConfigPath = "{d}/vpod-shim.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#
            );
            std::fs::create_dir_all(dir.join("cni")).unwrap();
            std::fs::write(
                dir.join("cni/10-vpodtest.conflist"),
                serde_json::to_vec_pretty(&serde_json::json!({
                    "cniVersion": "0.4.0",
                    "name": format!("vpodtest{subnet}"),
                    "plugins": [{
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": true,
                        "ipMasq": false,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": format!("10.89.{subnet}.0/24")}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": format!("{d}/cni-ipam"),
                        }
                    }]
                }))
                .unwrap(),
            )
            .unwrap();
        }
        std::fs::write(dir.join("config.toml"), config).unwrap();
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            child,
            bridge,
            subnet,
        };
        let t0 = Instant::now();
        while !c.sock().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if cri {
            c.import_busybox(
                CRI_NAMESPACE,
                PAUSE_IMAGE,
                Vec::new(),
                serde_json::json!({"Entrypoint": ["/bin/sleep", "2147483647"]}),
            );
        }
        c
    }

    /// containerd's gRPC (and CRI) socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The shim's config file (`ctr run --runtime-config-path`, and the CRI
    /// runtime's `ConfigPath`).
    pub fn shim_config(&self) -> PathBuf {
        self.dir.join("vpod-shim.toml")
    }

    /// kubelet's root dir as the shim is told of it.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// The shim's pod state dirs.
    pub fn shim_state(&self) -> PathBuf {
        self.dir.join("shim")
    }

    /// Pod state dirs the shim left (its disks, sockets): none after a pod.
    pub fn shim_state_left(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.shim_state())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Imports a busybox image (plus `extra` files, image config `config`)
    /// into `namespace` as `name`.
    pub fn import_busybox(
        &self,
        namespace: &str,
        name: &str,
        extra: Vec<Entry>,
        config: serde_json::Value,
    ) {
        let work = self
            .dir
            .join(format!("import-{}", name.replace(['/', ':'], "_")));
        let layout_dir = work.join("layout");
        layout(&layout_dir, &[busybox_layer(extra)], config);
        // Named the way `ctr image import` reads names from an OCI archive.
        let index_path = layout_dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]["annotations"] = serde_json::json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
        });
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let tar = work.join("image.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&layout_dir)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let o = self.ctr(namespace, &["images", "import", tar.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "import: {}\n{}",
            output_text(&o),
            self.log()
        );
        let _ = std::fs::remove_dir_all(&work);
    }

    /// Command lines of the shims this containerd started.
    pub fn shim_processes(&self) -> Vec<String> {
        let sock = self.sock();
        let sock = sock.to_string_lossy();
        processes()
            .into_iter()
            .filter(|(_, c)| c.contains("containerd-shim") && c.contains(&*sock))
            .map(|(_, c)| c)
            .collect()
    }

    /// Waits up to `timeout` for this containerd's shims to be gone.
    pub fn wait_no_shims(&self, timeout: Duration) -> Result<(), Vec<String>> {
        let t0 = Instant::now();
        loop {
            let left = self.shim_processes();
            if left.is_empty() {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(left);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// (pid, command line) of every process.
fn processes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            out.push((pid, String::from_utf8_lossy(&c).replace('\0', " ")));
        }
    }
    out
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kept for a look after a failure (the dir is a tmpfs that goes).
        let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(
            self.dir.join("containerd.log"),
            keep.join(format!(
                "{}.log",
                self.dir.file_name().unwrap().to_string_lossy()
            )),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; a failed test's must not
        // outlive the test.
        let sock = self.sock().to_string_lossy().into_owned();
        for (pid, c) in processes() {
            if c.contains("containerd-shim") && c.contains(&sock) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", b]).status();
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
