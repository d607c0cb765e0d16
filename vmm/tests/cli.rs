//! The `vpod-vmm` binary's exit statuses and error lines.

mod common;
use common::*;

use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpod-vmm"))
        .args(args)
        .output()
        .unwrap()
}

fn status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn usage_errors_exit_2() {
    let o = vmm(&["--vcpus", "1"]);
    assert_eq!(status(&o), 2, "missing --kernel");
    let o = vmm(&["--kernel", "/k", "--disk", "/d,bogus"]);
    assert_eq!(status(&o), 2);
    let o = vmm(&["--kernel", "/k", "--vcpus", "x"]);
    assert_eq!(status(&o), 2);
}

#[test]
fn vmm_errors_exit_1_with_one_line() {
    let o = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(status(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("vpod-vmm: error: kernel /nonexistent/vmlinux"),
        "{err}"
    );

    let k = pvh_elf(RESET);
    let kp = k.as_path().to_str().unwrap();
    let o = vmm(&["--kernel", kp, "--mem-mib", "16"]);
    assert_eq!(status(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("too little"));

    let o = vmm(&["--kernel", kp, "--vcpus", "0"]);
    assert_eq!(status(&o), 1);

    if kvm_available() {
        let junk = vmm_sys_util::tempfile::TempFile::new().unwrap();
        std::fs::write(junk.as_path(), b"MZ this is not an elf").unwrap();
        let o = vmm(&["--kernel", junk.as_path().to_str().unwrap()]);
        assert_eq!(status(&o), 1);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("vpod-vmm: error: not a PVH vmlinux"),
            "{err}"
        );

        let o = vmm(&["--kernel", kp, "--net", "a-tap-name-too-long-for-linux"]);
        assert_eq!(status(&o), 1);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("bad tap interface name"), "{err}");
    }
}

#[test]
fn guest_outcomes_map_to_exit_statuses() {
    if !kvm_available() {
        return;
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let metrics = dir.as_path().join("m.json");
    let k = pvh_elf(POWEROFF);
    let o = vmm(&[
        "--kernel",
        k.as_path().to_str().unwrap(),
        "--mem-mib",
        "32",
        "--rng",
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(status(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert_eq!(m["exit"], "Poweroff");
    assert!(m["metrics"]["start_to_first_kvm_run_us"].as_u64().unwrap() > 0);
    assert!(m["metrics"]["userspace_exits"]["io_out"].as_u64().unwrap() >= 2);

    let k = pvh_elf(RESET);
    assert_eq!(
        status(&vmm(&[
            "--kernel",
            k.as_path().to_str().unwrap(),
            "--mem-mib",
            "32"
        ])),
        3
    );

    let k = pvh_elf(&[0x0f, 0x0b]);
    assert_eq!(
        status(&vmm(&[
            "--kernel",
            k.as_path().to_str().unwrap(),
            "--mem-mib",
            "32"
        ])),
        4
    );

    // A vsock device with its unix socket, and a disk.
    let disk = dir.as_path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let uds = dir.as_path().join("v.sock");
    let k = pvh_elf(POWEROFF);
    let o = vmm(&[
        "--kernel",
        k.as_path().to_str().unwrap(),
        "--mem-mib",
        "32",
        "--disk",
        &format!("{},ro,id=root", disk.display()),
        "--vsock",
        &format!("{},cid=5", uds.display()),
        "--console",
        "off",
    ]);
    assert_eq!(status(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sigterm_stops_the_vm() {
    if !kvm_available() {
        return;
    }
    let k = pvh_elf(&[0xeb, 0xfe]); // jmp $
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpod-vmm"))
        .args([
            "--kernel",
            k.as_path().to_str().unwrap(),
            "--mem-mib",
            "32",
            "--vcpus",
            "2",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}
