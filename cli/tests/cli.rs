//! `vpod image ...` end to end on a store in a temp dir.

use std::path::Path;
use std::process::{Command, Output};

use vpod_images::Digest;

fn vpod(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpod"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("vpod runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A one-layer OCI layout holding /hello.
fn layout(dir: &Path) -> Digest {
    use vpod_test_support::{tar, Entry};
    let layer = tar(&[Entry::File("hello".into(), b"hello\n".to_vec(), 0o644)]);
    let md = vpod_test_support::layout(
        dir,
        &[layer],
        serde_json::json!({"Cmd": ["/hello"], "Env": ["A=1"]}),
    );
    Digest::from_hex(md.trim_start_matches("sha256:")).unwrap()
}

#[test]
fn import_ls_inspect_disk_rm_prune_usage() {
    let t = std::env::temp_dir().join(format!("vpod-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    let root = t.join("root");
    let md = layout(&t.join("layout"));

    let out = ok(&vpod(
        &root,
        &[
            "image",
            "import",
            t.join("layout").to_str().unwrap(),
            "--name",
            "hello:1",
        ],
    ));
    assert_eq!(out.trim(), format!("docker.io/library/hello:1 {md}"));
    let ls = ok(&vpod(&root, &["image", "ls"]));
    assert!(ls.contains("docker.io/library/hello:1"), "{ls}");
    assert!(ls.contains(md.short()), "{ls}");

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&vpod(&root, &["image", "inspect", "hello:1"]))).unwrap();
    assert_eq!(inspect["manifest"], md.as_str());
    assert_eq!(inspect["config"]["Cmd"][0], "/hello");
    assert!(inspect["block_image"]["path"]
        .as_str()
        .unwrap()
        .ends_with(".erofs"));

    let disk = ok(&vpod(&root, &["image", "disk", "hello:1"]));
    assert!(Path::new(disk.trim()).is_file(), "{disk}");

    let usage: serde_json::Value =
        serde_json::from_str(&ok(&vpod(&root, &["image", "usage"]))).unwrap();
    assert_eq!(usage["images"], 1);
    assert_eq!(usage["disks"], 1);

    assert!(ok(&vpod(&root, &["image", "rm", "hello:1"])).contains("untagged"));
    let pr = ok(&vpod(&root, &["image", "prune"]));
    assert!(pr.contains("removed 3 blobs, 1 block images"), "{pr}");
    let usage: serde_json::Value =
        serde_json::from_str(&ok(&vpod(&root, &["image", "usage"]))).unwrap();
    assert_eq!(
        (usage["images"].as_u64(), usage["blobs"].as_u64()),
        (Some(0), Some(0))
    );

    // Errors: a clear message and status 1; bad usage: status 2.
    let o = vpod(&root, &["image", "inspect", "nothing:here"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("vpod: error: image \"nothing:here\" is not in the store"));
    let o = vpod(
        &root,
        &["image", "import", t.join("missing").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(vpod(&root, &["image", "frobnicate"]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&t);
}

fn vpod_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpod"))
        .arg("--root")
        .arg(root)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("vpod runs")
}

/// `o` failed (status 1) with a message holding each of `words`.
fn failed_naming(o: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

/// Issue 12 item 14: the unpacked size of an image is bounded, configurably: a busybox image
/// (about 1-2 MiB unpacked, 400-odd entries) is refused under a smaller `--max-unpacked-size`
/// or `--max-entries` (or their env vars), with a message naming the limit and the flag; a
/// refused build names nothing; the defaults build it.
#[test]
fn an_unpack_limit_too_small_fails_the_build_naming_it() {
    let t = std::env::temp_dir().join(format!("vpod-cli-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    let root = t.join("root");
    let layout = t.join("busybox");
    vpod_test_support::layout(
        &layout,
        &[vpod_test_support::busybox_layer(Vec::new())],
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let path = layout.to_str().unwrap();
    let import = ["image", "import", path, "--name", "bb:1"];
    fn with<'a>(import: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [import, extra].concat()
    }

    let o = vpod(&root, &with(&import, &["--max-unpacked-size", "64Ki"]));
    failed_naming(&o, &["max_bytes = 65536", "--max-unpacked-size"]);
    let o = vpod_env(&root, &import, &[("VPOD_MAX_UNPACKED_SIZE", "64Ki")]);
    failed_naming(&o, &["max_bytes = 65536", "VPOD_MAX_UNPACKED_SIZE"]);
    let o = vpod(&root, &with(&import, &["--max-entries", "10"]));
    failed_naming(&o, &["max_entries = 10", "--max-entries"]);
    let o = vpod_env(&root, &import, &[("VPOD_MAX_ENTRIES", "10")]);
    failed_naming(&o, &["max_entries = 10"]);
    // A failed build sets no name.
    assert!(!ok(&vpod(&root, &["image", "ls"])).contains("bb:1"));
    // Bad values are usage errors naming the flag.
    for bad in [
        &["--max-unpacked-size", "lots"][..],
        &["--max-entries", "0"],
    ] {
        let o = vpod(&root, &with(&import, bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(bad[0]),
            "{bad:?}"
        );
    }

    // Imported without a build: the first build (`image disk`) is held to its own flags.
    ok(&vpod(
        &root,
        &with(&import, &["--no-build", "--max-unpacked-size", "1Ki"]),
    ));
    let o = vpod(
        &root,
        &["image", "disk", "bb:1", "--max-unpacked-size", "64Ki"],
    );
    failed_naming(&o, &["max_bytes = 65536", "--max-unpacked-size"]);
    let disk = ok(&vpod(&root, &["image", "disk", "bb:1"]));
    assert!(Path::new(disk.trim()).is_file(), "{disk}");
    // Within the limits (the defaults, or big enough ones) it builds.
    ok(&vpod(
        &root,
        &with(
            &import,
            &["--max-unpacked-size", "64Mi", "--max-entries", "5000"],
        ),
    ));
    let _ = std::fs::remove_dir_all(&t);
}

/// `vpod run`'s `--vmm-*` flags (and their env vars) are checked before anything else: a bad
/// value is a usage error (status 2) naming the flag and what is wrong.
#[test]
fn bad_vmm_flags_are_usage_errors_saying_why() {
    let root = std::env::temp_dir().join(format!("vpod-cli-vmm-{}", std::process::id()));
    let usage_error = |o: &Output, words: &[&str]| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for w in words {
            assert!(err.contains(w), "{w:?} not in: {err}");
        }
    };
    let run = |flags: &[&str]| vpod(&root, &[&["run"], flags, &["img"]].concat());
    usage_error(
        &run(&["--vmm-uid-range", "100000"]),
        &["--vmm-uid-range", "expected FIRST:COUNT"],
    );
    usage_error(
        &run(&["--vmm-uid-range", "0:65536"]),
        &["--vmm-uid-range", "uid 0 is root"],
    );
    usage_error(
        &run(&["--vmm-uid-range", "4294967000:65536"]),
        &["--vmm-uid-range", "past the last uid"],
    );
    usage_error(
        &run(&["--vmm-seccomp", "strict"]),
        &["--vmm-seccomp", "enforce, log or off"],
    );
    usage_error(
        &run(&["--vmm-cgroup-parent", "../x"]),
        &["--vmm-cgroup-parent", "without `..`"],
    );
    usage_error(
        &run(&["--vmm-cgroup-parent", "vpod", "--vmm-no-cgroup"]),
        &["--vmm-no-cgroup"],
    );
    let o = vpod_env(&root, &["run", "img"], &[("VPOD_VMM_UID_RANGE", "1:0")]);
    usage_error(&o, &["--vmm-uid-range", "COUNT must be at least 1"]);
    let o = vpod_env(&root, &["run", "img"], &[("VPOD_VMM_SECCOMP", "loud")]);
    usage_error(&o, &["--vmm-seccomp"]);
    let _ = std::fs::remove_dir_all(&root);
}
