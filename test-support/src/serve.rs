//! A private `vpod serve` for tests and benchmarks: its own dirs, image store (busybox imported
//! as [`IMAGE`] through `vpod image import`), CNI bridge network (10.88.201.0/24 on `vpsrv0`,
//! portmap for hostPort) and config; leftovers counted host-wide.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::{v1, Cri};
use crate::guest_file;

/// The image every server's store holds.
pub const IMAGE: &str = "docker.io/library/vpod-busybox:1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One server at a time: the test bed has one CPU, and leftovers are counted host-wide.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `vpod serve` with its own dirs, CNI network and image store.
#[derive(Debug)]
pub struct Serve {
    /// Its dir: config, socket, state, disks, images, log (`serve.log`).
    pub dir: PathBuf,
    /// The server process.
    pub child: Child,
    vpod: PathBuf,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Serve {
    /// A server of the `vpod` binary `vpod`.
    pub fn start(name: &str, vpod: &Path) -> Serve {
        Serve::start_with(name, vpod, "")
    }

    /// A server whose config ends with `extra` (TOML).
    pub fn start_with(name: &str, vpod: &Path, extra: &str) -> Serve {
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("vpod-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let layout = dir.join("layout");
        let layer = crate::busybox_layer(Vec::new());
        crate::layout(&layout, &[layer], serde_json::json!({"Cmd": ["sh"]}));
        let out = Command::new(vpod)
            .arg("--root")
            .arg(dir.join("images"))
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", IMAGE])
            .output()
            .unwrap();
        assert!(out.status.success(), "vpod image import: {out:?}");
        let d = dir.display();
        std::fs::write(
            dir.join("cni/10-serve.conflist"),
            serde_json::to_vec(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "vpodserve",
                "plugins": [{
                    "type": "bridge",
                    "bridge": "vpsrv0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.88.201.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": format!("{d}/cni-ipam"),
                    }
                }, {"type": "portmap", "capabilities": {"portMappings": true}}]
            }))
            .unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("vpod.toml"),
            format!(
                "socket = \"{d}/vpod.sock\"\nstate_dir = \"{d}/state\"\ndisk_dir = \"{d}/disks\"\n\
                 image_root = \"{d}/images\"\nkubelet_root = \"{d}/kubelet\"\n\
                 kernel = \"{}\"\ninitrd = \"{}\"\ncni_conf_dir = \"{d}/cni\"\n\
                 cni_bin_dirs = [\"/usr/lib/cni\"]\n{extra}",
                guest_file("vmlinux").display(),
                guest_file("initramfs.cpio").display(),
            ),
        )
        .unwrap();
        let child = spawn(vpod, &dir);
        let s = Serve {
            dir,
            child,
            vpod: vpod.into(),
            _one: one,
        };
        s.wait_socket();
        s
    }

    /// Starts the server again on the same dirs (after [`Serve::stop`] or a kill).
    pub fn restart(&mut self) {
        self.child = spawn(&self.vpod, &self.dir);
        self.wait_socket();
    }

    /// Waits until the server answers (a killed one's socket file may still be there).
    fn wait_socket(&self) {
        let answers = || {
            runtime().block_on(async {
                let mut c = Cri::connect(&self.sock()).await.ok()?;
                c.runtime.version(v1::VersionRequest::default()).await.ok()
            })
        };
        let t0 = Instant::now();
        while answers().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "vpod serve did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its CRI socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.join("vpod.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) of our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "vpod serve did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server's pods left: state and disk dirs, netns, VMM processes.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for d in ["state/pods", "disks"] {
            for e in std::fs::read_dir(self.dir.join(d))
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(e.path().display().to_string());
            }
        }
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("vpod-") {
                left.push(format!("netns {}", e.file_name().to_string_lossy()));
            }
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // One server at a time (ONE): any VMM is this server's.
            if cmd
                .split(' ')
                .next()
                .is_some_and(|a| a.ends_with("vpod-vmm"))
            {
                left.push(format!("process {cmd}"));
            }
        }
        left
    }
}

/// `vpod serve --config <dir>/vpod.toml`, its output appended to `<dir>/serve.log`.
fn spawn(vpod: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .unwrap();
    Command::new(vpod)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("vpod.toml"))
        .env("VPOD_LOG", "info,vpod_sandbox=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
