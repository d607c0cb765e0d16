//! The test bed's own tests: each boots a real L1 (QEMU TCG, nested SVM) through the `testbed` binary.
//! They run on the host (not `vm_*`): the test bed is what they test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One L1 at a time: two TCG VMs on two cores only make both slow.
static L1: Mutex<()> = Mutex::new(());

fn testbed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
}

fn run_in(dir: &Path, runs: &Path, args: &[&str]) -> Output {
    let _one = L1.lock().unwrap_or_else(|e| e.into_inner());
    let out = testbed()
        .current_dir(dir)
        .env("VPOD_TESTBED_RUNS", runs)
        .env("VPOD_TESTBED", "always")
        .args(args)
        .output()
        .expect("spawn testbed");
    eprintln!(
        "testbed {args:?} -> {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vpod-testbed-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// QEMU processes whose command line mentions `needle` (our per-test runs dir).
fn qemus_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("qemu-system") && cmd.contains(&needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn kvm_smoke_runs_guest_code_in_l1() {
    let runs = tempdir("smoke");
    let out = run_in(
        &runs,
        &runs,
        &["run", "--", env!("CARGO_BIN_EXE_kvm-smoke")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("KVM_SMOKE_OK"));
}

#[test]
fn l2_linux_reaches_user_space_and_its_marker_comes_back() {
    let runs = tempdir("l2");
    let kdir = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("build")
        .output()
        .unwrap();
    assert!(kdir.status.success());
    let kdir = String::from_utf8(kdir.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/l2-boot.sh");
    let out = run_in(
        &runs,
        &runs,
        &["run", "--", "sh", script.to_str().unwrap(), kdir.trim()],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("L2_USERSPACE_OK pid=1"));
}

#[test]
fn exit_status_stdout_stderr_env_and_cwd_come_back() {
    let work = tempdir("status");
    let runs = work.join("runs");
    let script = "echo \"out $MARK $(pwd)\"; echo err >&2; echo written > result.txt; exit 7";
    let out = {
        let _one = L1.lock().unwrap_or_else(|e| e.into_inner());
        testbed()
            .current_dir(&work)
            .env("VPOD_TESTBED_RUNS", &runs)
            .env("MARK", "it's here")
            .args(["run", "--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("out it's here {}", work.display())),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    // the working dir is shared read-write: what the command wrote is on the host
    assert_eq!(
        std::fs::read_to_string(work.join("result.txt")).unwrap(),
        "written\n"
    );
    // a successful run leaves no run dir behind
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
}

#[test]
fn timeout_kills_l1_and_says_so() {
    let runs = tempdir("timeout");
    let out = run_in(
        &runs,
        &runs,
        &[
            "run",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            "echo started; sleep 1000",
        ],
    );
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timeout") && err.contains("console log"),
        "{err}"
    );
    assert!(
        qemus_mentioning(&runs).is_empty(),
        "qemu outlived the test bed"
    );
    // the console log is kept for the post-mortem
    let kept: Vec<_> = std::fs::read_dir(&runs).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].path().join("console.log").exists());
}

/// A frozen L1 (here: its heartbeat stopped by the job) is killed and the command run again.
#[test]
fn a_frozen_l1_is_killed_and_the_command_run_again() {
    let runs = tempdir("frozen");
    let out = run_in(
        &runs,
        &runs,
        &[
            "run",
            "--stall-timeout",
            "45",
            "--timeout",
            "600",
            "--",
            "sh",
            "-c",
            "if [ -e stalled-once ]; then echo second-run; else touch stalled-once; \
             pkill -STOP -f 'busybox sleep 30' && echo first-run; sleep 1000; fi",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // "second-run" means the first attempt ran (it left the marker). What a frozen L1 wrote last
    // may never reach the host (its page cache over 9p goes with it), so "first-run" may be lost.
    assert!(stdout.contains("second-run"), "{stdout}");
    assert!(stderr.contains("L1 froze"), "{stderr}");
    assert!(
        qemus_mentioning(&runs).is_empty(),
        "qemu outlived the test bed"
    );
}

#[test]
fn missing_command_is_an_error_not_a_hang() {
    let runs = tempdir("missing");
    let out = run_in(&runs, &runs, &["run", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
}
