//! Test and benchmark helpers: OCI image layouts written from the host's
//! busybox-static (no registry needed), a private containerd
//! ([`containerd`]) and the project's CRI client ([`cri`]). Digests are plain
//! `sha256:<hex>` strings so this crate depends on no vpod crate (any of them
//! can use it).

#![warn(missing_docs)]

use std::path::Path;

pub mod containerd;
pub mod cri;
pub mod jail;
pub mod registry;
pub mod serve;

use sha2::Digest as _;

/// `target/guest/<name>` (the guest kernel and initramfs `make guest` builds).
pub fn guest_file(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make guest` (or `make test`) first",
        p.display()
    );
    p
}

/// A finished command's status, stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One entry of a layer.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A regular file: path, content, mode.
    File(String, Vec<u8>, u32),
    /// A symlink: path, target.
    Symlink(String, String),
    /// A directory: path, mode.
    Dir(String, u32),
}

/// A tar (GNU headers) of `entries`, in order.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            Entry::File(name, data, mode) => {
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            Entry::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, name, target).unwrap();
            }
            Entry::Dir(name, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(*mode);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Incompressible bytes (xorshift).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn blob(dir: &Path, data: &[u8]) -> String {
    let d = digest(data);
    let hex = d.trim_start_matches("sha256:");
    std::fs::write(dir.join("blobs/sha256").join(hex), data).unwrap();
    d
}

/// Writes an OCI layout of `layers` (uncompressed tars) with `config`
/// (the image config's `config` object) into `dir`; returns the manifest digest.
pub fn layout(dir: &Path, layers: &[Vec<u8>], config: serde_json::Value) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let lds: Vec<String> = layers.iter().map(|l| blob(dir, l)).collect();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": lds}
    }))
    .unwrap();
    let cd = blob(dir, &cfg);
    let ldesc: Vec<_> = layers
        .iter()
        .zip(&lds)
        .map(|(l, d)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": ldesc
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

/// A busybox layer: /bin/busybox with a symlink per applet, /etc, /tmp.
pub fn busybox_layer(extra: Vec<Entry>) -> Vec<u8> {
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    let mut entries = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::File(
            "bin/busybox".into(),
            std::fs::read("/bin/busybox").unwrap(),
            0o755,
        ),
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".to_vec(),
            0o644,
        ),
    ];
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
        }
    }
    entries.extend(extra);
    tar(&entries)
}
