//! Issue 12 item 11: what containerd runs after a shim died
//! (`containerd-shim-vpod-v2 -namespace N -id ID -bundle B delete`) removes
//! the dead shim's pod dirs, found through the marker in the task's bundle.

use std::process::{Command, Stdio};

#[test]
fn delete_after_a_killed_shim_removes_the_pod_state() {
    let base = std::env::temp_dir().join(format!("vpod-shim-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (state, eph, cache, bundle) = (
        base.join("state/k8s.io-pod1"),
        base.join("ephemeral/k8s.io-pod1"),
        base.join("rootfs"),
        base.join("bundle"),
    );
    for d in [&state, &eph, &cache, &bundle] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(state.join("vsock.sock"), "").unwrap();
    std::fs::write(eph.join("ephemeral.img"), "x").unwrap();
    // A shim that ran and was killed: its pid is gone.
    let mut shim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = shim.id();
    shim.kill().unwrap();
    shim.wait().unwrap();
    std::fs::write(cache.join(format!(".abc.{pid}.tmp")), "half a disk").unwrap();
    let marker = serde_json::json!({
        "shim_pid": pid,
        "shim_start_time": 12345,
        "state_dir": state,
        "ephemeral_dir": eph,
        "rootfs_cache": cache,
    });
    std::fs::write(bundle.join("vpod-shim.json"), marker.to_string()).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2"))
        .args(["-namespace", "k8s.io", "-id", "pod1", "-bundle"])
        .arg(&bundle)
        .arg("delete")
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", "/nonexistent/ttrpc.sock")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "a DeleteResponse on stdout");
    assert!(!state.exists(), "state dir left");
    assert!(!eph.exists(), "ephemeral dir left");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    std::fs::remove_dir_all(&base).unwrap();
}
