//! Issue 12 item 11: what containerd runs after a shim died
//! (`containerd-shim-vpod-v2 -namespace N -id ID -bundle B delete`) removes
//! the dead shim's pod dirs, found through the marker in the task's bundle,
//! and nothing else: a dir the marker names that is not this task's pod dir
//! as the shim makes it (named after the task, a real 0700 dir of the shim's
//! uid, directly below a parent only root could write into) is left alone.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A dir made the way the shim makes pod dirs: 0700, whatever the umask.
fn private_dir(d: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .unwrap();
}

/// A shim that ran and was killed: its pid is gone.
fn dead_pid() -> u32 {
    let mut shim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = shim.id();
    shim.kill().unwrap();
    shim.wait().unwrap();
    pid
}

/// A fresh base dir for one test.
fn base(test: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("vpod-shim-crash-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    base
}

/// Writes a dead shim's marker into `bundle`.
fn write_marker(bundle: &Path, pid: u32, dirs: [&Path; 5]) {
    let [state, eph, cache, state_root, eph_root] = dirs;
    let marker = serde_json::json!({
        "shim_pid": pid,
        "shim_start_time": 12345,
        "state_dir": state,
        "ephemeral_dir": eph,
        "rootfs_cache": cache,
        "state_root": state_root,
        "ephemeral_root": eph_root,
    });
    std::fs::create_dir_all(bundle).unwrap();
    std::fs::write(bundle.join("vpod-shim.json"), marker.to_string()).unwrap();
}

/// Runs the shim's `delete` for task `id` of `bundle`, as containerd does.
fn delete(id: &str, bundle: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2"))
        .args(["-namespace", "k8s.io", "-id", id, "-bundle"])
        .arg(bundle)
        .arg("delete")
        .current_dir(bundle)
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
}

#[test]
fn delete_after_a_killed_shim_removes_the_pod_state() {
    let base = base("normal");
    // containerd names the bundle after the task; the pod dirs are named after it too.
    let (state, eph, cache, bundle) = (
        base.join("state/k8s.io-pod1"),
        base.join("ephemeral/k8s.io-pod1"),
        base.join("rootfs"),
        base.join("pod1"),
    );
    for d in [&state, &eph] {
        private_dir(d);
    }
    for d in [&cache, &bundle] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(state.join("vsock.sock"), "").unwrap();
    std::fs::write(eph.join("ephemeral.img"), "x").unwrap();
    let pid = dead_pid();
    std::fs::write(cache.join(format!(".abc.{pid}.tmp")), "half a disk").unwrap();
    write_marker(
        &bundle,
        pid,
        [
            &state,
            &eph,
            &cache,
            &base.join("state"),
            &base.join("ephemeral"),
        ],
    );

    delete("pod1", &bundle);
    assert!(!state.exists(), "state dir left");
    assert!(!eph.exists(), "ephemeral dir left");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Every dir below is something a marker could name that is not the pod's: each stays, with
/// what is in it. The pod's own dirs (the `ephemeral` side of each case) still go.
#[test]
fn delete_leaves_what_is_not_the_pods_own() {
    let base = base("refused");
    let (state_root, eph_root) = (base.join("state"), base.join("ephemeral"));
    private_dir(&state_root);
    private_dir(&eph_root);
    let victim = base.join("victim");
    private_dir(&victim);
    std::fs::write(victim.join("data"), "keep me").unwrap();
    let elsewhere =
        std::env::temp_dir().join(format!("vpod-shim-elsewhere-{}", std::process::id()));
    private_dir(&elsewhere);
    std::fs::write(elsewhere.join("data"), "keep me").unwrap();
    let kept = |d: &Path| {
        assert!(
            d.symlink_metadata().is_ok() && d.join("data").exists(),
            "{} removed",
            d.display()
        );
    };

    // (state dir the marker names, what it names as its parent, the task) for each case; the
    // named dir is made in the case's own way first.
    let cases: Vec<(&str, PathBuf, PathBuf, &str)> = vec![
        // /tmp/<something else>, with /tmp or the shim's dir as its parent.
        ("tmp-other", elsewhere.clone(), std::env::temp_dir(), "pod1"),
        ("tmp-other-2", elsewhere.clone(), state_root.clone(), "pod2"),
        // The pod's name, but a symlink to another dir.
        (
            "symlink",
            state_root.join("k8s.io-pod3"),
            state_root.clone(),
            "pod3",
        ),
        // The pod's name, but 0755: not made by the shim.
        (
            "mode",
            state_root.join("k8s.io-pod4"),
            state_root.clone(),
            "pod4",
        ),
        // Another pod's dir (another task id than the bundle's).
        (
            "other-id",
            state_root.join("k8s.io-pod9"),
            state_root.clone(),
            "pod5",
        ),
        // The pod's name, but owned by another uid.
        (
            "owner",
            state_root.join("k8s.io-pod6"),
            state_root.clone(),
            "pod6",
        ),
        // The pod's name below a parent others may write into.
        (
            "parent",
            base.join("open/k8s.io-pod7"),
            base.join("open"),
            "pod7",
        ),
    ];
    for (case, dir, root, id) in &cases {
        if *case == "owner" && !nix::unistd::geteuid().is_root() {
            continue;
        }
        match *case {
            "symlink" => std::os::unix::fs::symlink(&victim, dir).unwrap(),
            "mode" => {
                private_dir(dir);
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            "owner" => {
                private_dir(dir);
                std::os::unix::fs::chown(dir, Some(4242), Some(4242)).unwrap();
            }
            "parent" => {
                private_dir(dir);
                std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
            _ => private_dir(dir),
        }
        if !dir.symlink_metadata().unwrap().file_type().is_symlink() {
            std::fs::write(dir.join("data"), "keep me").unwrap();
        }
        // The pod's own ephemeral dir, beside: removed all the same.
        let eph = eph_root.join(format!("k8s.io-{id}"));
        private_dir(&eph);
        let bundle = base.join("bundles").join(id);
        write_marker(
            &bundle,
            dead_pid(),
            [dir, &eph, &base.join("rootfs"), root, &eph_root],
        );
        delete(id, &bundle);
        kept(dir);
        assert!(!eph.exists(), "{case}: the pod's own ephemeral dir left");
    }
    kept(&victim);
    kept(&elsewhere);
    assert_eq!(
        std::fs::read_to_string(victim.join("data")).unwrap(),
        "keep me"
    );
    std::fs::remove_dir_all(&elsewhere).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}
