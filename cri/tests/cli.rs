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

fn blob(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    d
}

/// A one-layer OCI layout holding /hello.
fn layout(dir: &Path) -> Digest {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    b.append_data(&mut h, "hello", &b"hello\n"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let ld = blob(dir, &layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    }))
    .unwrap();
    let cd = blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let md = blob(dir, &manifest);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
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
