//! Two `vpod` processes on one store root at the same time: both import the same image and ask
//! for its block image; the store's file locks make exactly one of them build it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use vpod_images::{Digest, Store};

use vpod_test_support as common;

/// A two-layer OCI layout (busybox, then 8 MiB of noise).
fn layout(dir: &Path) -> Digest {
    use common::Entry;
    let layers = [
        common::tar(&[Entry::File(
            "bin/busybox".into(),
            std::fs::read("/bin/busybox").unwrap(),
            0o755,
        )]),
        common::tar(&[Entry::File(
            "data/noise".into(),
            common::noise(8 << 20),
            0o755,
        )]),
    ];
    let md = common::layout(
        dir,
        &layers,
        serde_json::json!({"Cmd": ["/bin/busybox", "sh"]}),
    );
    Digest::from_hex(md.trim_start_matches("sha256:")).unwrap()
}

fn spawn(root: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vpod"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vpod runs")
}

fn ok(o: Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
    (out, err)
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The store after the race: every blob verifies, exactly one block image, no leftovers.
fn assert_store_sound(root: &Path, md: &Digest) {
    let store = Store::open(root).unwrap();
    let root = store.dir();
    let blobs = list(&root.join("blobs/sha256"));
    assert_eq!(blobs.len(), 4, "manifest, config, two layers: {blobs:?}");
    for b in &blobs {
        store.verify_blob(&Digest::from_hex(b).unwrap()).unwrap();
    }
    let disks: Vec<String> = list(&root.join("disks"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(
        disks,
        vec![format!("{}.erofs", md.hex()), format!("{}.json", md.hex())],
        "exactly one block image"
    );
    assert_eq!(
        list(&root.join("ingest")),
        Vec::<String>::new(),
        "temp files"
    );
    assert_eq!(list(&root.join("work")), Vec::<String>::new(), "work trees");
    assert_eq!(store.resolve("race:1").unwrap(), *md);
}

/// Waits until `n` processes are blocked on the flock of `path` (the "->" lines of /proc/locks).
fn wait_for_waiters(path: &Path, n: usize) {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{}", std::fs::metadata(path).unwrap().ino());
    let t0 = std::time::Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let waiting = locks
            .lines()
            .filter(|l| l.contains("->") && l.split_whitespace().any(|f| f.ends_with(&ino)))
            .count();
        if waiting >= n {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{waiting} of {n} processes reached the build lock:\n{locks}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn two_processes_import_and_build_the_same_image_at_once() {
    let t = std::env::temp_dir().join(format!("vpod-two-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    let md = layout(&t.join("layout"));
    let lp = t.join("layout");
    let lp = lp.to_str().unwrap();

    // Round 1: both import (blobs ingested side by side) and then build. The test holds the
    // image's build lock until both processes wait on it, so the two really meet there.
    let root = t.join("root1");
    let store_dir = Store::open(&root).unwrap().dir().to_owned();
    let lock_path = store_dir.join(format!("disks/{}.lock", md.hex()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    let a = spawn(&root, &["image", "import", lp, "--name", "race:1"]);
    let b = spawn(&root, &["image", "import", lp, "--name", "race:1"]);
    wait_for_waiters(&lock_path, 2);
    lock.unlock().unwrap();
    drop(lock);
    let (a, b) = (
        ok(a.wait_with_output().unwrap()),
        ok(b.wait_with_output().unwrap()),
    );
    let want = format!("docker.io/library/race:1 {md}");
    assert_eq!((a.0.trim(), b.0.trim()), (want.as_str(), want.as_str()));
    let built = [&a.1, &b.1].iter().filter(|e| e.contains("unpack")).count();
    let cached = [&a.1, &b.1]
        .iter()
        .filter(|e| e.contains("(cached)"))
        .count();
    assert_eq!(
        (built, cached),
        (1, 1),
        "one builds, one waits: {a:?} {b:?}"
    );
    assert_store_sound(&root, &md);

    // Round 2: imported without a build, then two `image disk` at once.
    let root = t.join("root2");
    ok(spawn(
        &root,
        &["image", "import", lp, "--name", "race:1", "--no-build"],
    )
    .wait_with_output()
    .unwrap());
    let a = spawn(&root, &["image", "disk", "race:1"]);
    let b = spawn(&root, &["image", "disk", "race:1"]);
    let (a, b) = (
        ok(a.wait_with_output().unwrap()),
        ok(b.wait_with_output().unwrap()),
    );
    assert_eq!(a.0, b.0, "both print the same block image");
    assert!(
        a.0.trim().ends_with(&format!("disks/{}.erofs", md.hex())),
        "{a:?}"
    );
    assert_store_sound(&root, &md);
    let _ = std::fs::remove_dir_all(&t);
}
