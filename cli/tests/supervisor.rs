//! Pod records and their supervisors without a VM (issue 12 items 11, 14):
//! a `vpod run` killed during boot leaves nothing once any vpod command
//! runs, a supervisor killed during boot is reported with how it died, and
//! `rm -f` never signals a process that merely has a recorded pid.
//!
//! A boot is killed deterministically with RLIMIT_FSIZE: the pod's sparse
//! ephemeral disk (1 GiB) is far past the limit, so the kernel sends SIGXFSZ
//! at its ftruncate, before any VM would start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("vpod-sup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("guest")).unwrap();
        // Files, not a guest: the boot dies before they are read.
        std::fs::write(dir.join("guest/vmlinux"), "not a kernel").unwrap();
        std::fs::write(dir.join("guest/initrd"), "not an initrd").unwrap();
        Env { dir }
    }

    fn pods(&self) -> PathBuf {
        self.dir.join("run/pods")
    }

    fn eph(&self) -> PathBuf {
        self.dir.join("eph")
    }

    fn vpod(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vpod"));
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .stdin(Stdio::null());
        c
    }

    fn import(&self) {
        use vpod_test_support::{tar, Entry};
        let layer = tar(&[Entry::File("hello".into(), b"hello\n".to_vec(), 0o755)]);
        let layout = self.dir.join("layout");
        vpod_test_support::layout(&layout, &[layer], serde_json::json!({"Cmd": ["/hello"]}));
        let o = self
            .vpod()
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", "hello:1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }

    /// `vpod run [extra] hello:1` with writes capped at 32 KiB (and no core dump).
    fn run_with_a_boot_that_dies(&self, extra: &[&str]) -> Output {
        let vpod = self.vpod();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"ulimit -c 0; ulimit -f 64; exec "$@""#)
            .arg("sh")
            .arg(vpod.get_program())
            .args(vpod.get_args())
            .arg("run")
            .args(extra)
            .arg("--ephemeral-dir")
            .arg(self.eph())
            .arg("--kernel")
            .arg(self.dir.join("guest/vmlinux"))
            .arg("--initrd")
            .arg(self.dir.join("guest/initrd"))
            .args(["hello:1", "--", "/hello"])
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.pods())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_run_killed_during_boot_leaves_nothing_after_the_next_vpod_command() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new("gc");
    env.import();
    let o = env.run_with_a_boot_that_dies(&["--name", "killed"]);
    assert_eq!(o.status.signal(), Some(libc::SIGXFSZ), "{}", text(&o));
    // What the killed run left: its record and ephemeral dir.
    assert_eq!(env.records(), ["killed"]);
    assert!(env.eph().join("killed").exists());

    let o = env.vpod().args(["ps", "-a"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        env.records().is_empty(),
        "records left: {:?}",
        env.records()
    );
    assert!(!env.eph().join("killed").exists(), "ephemeral dir left");
}

#[test]
fn a_supervisor_killed_during_boot_is_reported_with_its_signal() {
    let env = Env::new("boot");
    env.import();
    let o = env.run_with_a_boot_that_dies(&["-d"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pod did not start: the supervisor (pid ")
            && err.contains("was killed by signal 25 (SIGXFSZ) before the pod started"),
        "{err}"
    );
    assert!(
        env.records().is_empty(),
        "records left: {:?}",
        env.records()
    );
}

/// A process whose argv[0] ends in "vpod": what the old check took for a supervisor.
fn not_a_supervisor(dir: &Path) -> std::process::Child {
    let exe = dir.join("not-vpod");
    std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
    Command::new(&exe).arg("60").spawn().unwrap()
}

#[test]
fn rm_force_never_signals_a_process_that_has_a_recorded_pid() {
    let env = Env::new("rm");
    let mut other = not_a_supervisor(&env.dir);
    let pid = other.id();
    // Records naming `other`: by bare pid (the old format) and with a start
    // time that is not its own (its pid recycled).
    for (id, owner) in [
        ("bare", serde_json::json!(pid)),
        ("recycled", serde_json::json!({"pid": pid, "start_time": 1})),
    ] {
        let rec = env.pods().join(id);
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(rec.join("run.json"), "{}").unwrap();
        std::fs::write(rec.join("supervisor.pid"), owner.to_string()).unwrap();
        let o = env.vpod().args(["rm", "-f", id]).output().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            other.try_wait().unwrap().is_none(),
            "`vpod rm -f {id}` signalled pid {pid}: {}",
            text(&o)
        );
        assert!(!rec.exists(), "record {id} left: {}", text(&o));
    }
    other.kill().unwrap();
    other.wait().unwrap();
}
