//! Detached pods whose supervisor is killed (issue 12 item 11), and `rm -f`
//! through the supervisor's pidfd (item 14), on real microVMs. Named `vm_*`
//! so cargo's runner sends it through the test bed.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vpod_images::Store;
use vpod_test_support as common;

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("vpod-vmsup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        let layer = common::busybox_layer(Vec::new());
        common::layout(&layout, &[layer], serde_json::json!({"Cmd": ["sh"]}));
        let store = Store::open(&dir.join("root")).unwrap();
        vpod_images::import(&store, &layout, Some("busybox:test")).unwrap();
        Env { dir }
    }

    fn out(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vpod"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .args(args)
            .env("VPOD_KERNEL", common::guest_file("vmlinux"))
            .env("VPOD_INITRD", common::guest_file("initramfs.cpio"))
            .env("VPOD_EPHEMERAL_DIR", self.dir.join("eph"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run_detached(&self) -> String {
        let o = self.out(&["run", "-d", "busybox:test", "--", "sleep", "1000"]);
        assert!(o.status.success(), "{}", common::output_text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn record(&self, id: &str) -> PathBuf {
        self.dir.join("run/pods").join(id)
    }

    fn supervisor_pid(&self, id: &str) -> i32 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.record(id).join("supervisor.pid")).unwrap())
                .unwrap();
        v["pid"].as_i64().unwrap() as i32
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.dir.join("run/pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = self.out(&["rm", "-f", &e.file_name().to_string_lossy()]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gone(pid: i32) -> bool {
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if t0.elapsed() > Duration::from_secs(30) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_killed_supervisor_leaves_nothing_and_rm_force_stops_a_live_one() {
    let env = Env::new("kill");
    let id = env.run_detached();
    let pid = env.supervisor_pid(&id);
    assert!(env.dir.join("eph").join(&id).exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(gone(pid), "supervisor {pid} still there after SIGKILL");
    let ps = env.out(&["ps", "-a"]);
    assert!(ps.status.success(), "{}", common::output_text(&ps));
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&id),
        "{}",
        common::output_text(&ps)
    );
    assert!(!env.record(&id).exists(), "record left");
    assert!(
        !env.dir.join("eph").join(&id).exists(),
        "ephemeral dir left"
    );

    // A live one: rm -f signals it through its pidfd and waits for it.
    let id = env.run_detached();
    let pid = env.supervisor_pid(&id);
    let rm = env.out(&["rm", "-f", &id]);
    assert!(rm.status.success(), "{}", common::output_text(&rm));
    assert!(gone(pid), "supervisor {pid} survived rm -f");
    assert!(!env.record(&id).exists());
    assert!(
        !env.dir.join("eph").join(&id).exists(),
        "ephemeral dir left"
    );
}
