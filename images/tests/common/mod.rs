//! Test helpers: layers written as tar in Rust, OCI layouts and docker-save archives around them,
//! and a busybox-static test image.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use vpod_images::oci::{self, Descriptor, Manifest};
use vpod_images::Digest;

/// A layer tar being written.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file with PAX xattrs (`SCHILY.xattr.<name>`).
    pub fn file_xattr(mut self, path: &str, data: &[u8], name: &str, value: &[u8]) -> Self {
        self.b
            .append_pax_extensions([(format!("SCHILY.xattr.{name}").as_str(), value)])
            .unwrap();
        self.file_inner(path, data)
    }

    fn file_inner(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name is written raw (the tar crate refuses `..` and absolute paths, as it
    /// should; a hostile layer is not written with it).
    pub fn raw_file(mut self, raw_name: &str, data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
        h.set_size(data.len() as u64);
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..raw_name.len()].copy_from_slice(raw_name.as_bytes());
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (data.to_vec(), oci::OCI_LAYER_TAR),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            (e.finish().unwrap(), oci::OCI_LAYER_GZIP)
        }
        Compression::Zstd => (zstd::encode_all(data, 3).unwrap(), oci::OCI_LAYER_ZSTD),
    }
}

fn write_blob(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(d.hex()), data).unwrap();
    d
}

fn desc(media_type: &str, data: &[u8], d: Digest) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: d,
        size: data.len() as u64,
        platform: None,
        annotations: Default::default(),
    }
}

/// The image config JSON for `layers` (uncompressed tars, for diff_ids).
pub fn config_json(layers: &[Vec<u8>], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "Entrypoint": null,
            "Env": ["PATH=/bin", "VPOD_TEST=1"],
            "WorkingDir": "/work",
            "User": "1000:1000",
            "Labels": {"org.vpod.test": "yes"},
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Writes an OCI image layout at `dir` with the given layers (uncompressed tars, compressed as
/// asked). Returns the manifest digest.
pub fn write_layout(dir: &Path, layers: &[Vec<u8>], c: Compression, tag: &str) -> Digest {
    std::fs::create_dir_all(dir).unwrap();
    let config = config_json(layers, &["/bin/sh"]);
    let cd = write_blob(dir, &config);
    let mut descs = Vec::new();
    for l in layers {
        let (data, mt) = compress(l, c);
        let d = write_blob(dir, &data);
        descs.push(desc(mt, &data, d));
    }
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: desc(oci::OCI_CONFIG, &config, cd),
        layers: descs,
    };
    let mbytes = serde_json::to_vec(&m).unwrap();
    let md = write_blob(dir, &mbytes);
    let mut mdesc = desc(oci::OCI_MANIFEST, &mbytes, md.clone());
    mdesc
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), tag.into());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// Packs a directory into a tar file (paths relative to it).
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A `docker save` archive in the old layout (`<id>/layer.tar`, `<hex>.json`, manifest.json).
pub fn write_docker_save(out: &Path, layers: &[Vec<u8>], repo_tag: &str) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    let config = config_json(layers, &["/bin/sh"]);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    add(&config_name, &config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{:064x}/layer.tar", i + 1);
        add(&name, l);
        names.push(name);
    }
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
}

/// The busybox-static test image: /bin/busybox, a few applet symlinks, /etc/passwd, a marker
/// file the VM test reads.
pub fn busybox_layers() -> Vec<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let base = Layer::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("work", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .symlink("bin/sh", "busybox")
        .symlink("bin/cat", "busybox")
        .symlink("bin/ls", "busybox")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/hello.txt", b"HELLO-FROM-THE-LOWER-LAYER\n", 0o644)
        .tar();
    let top = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hello.txt", b"HELLO-FROM-AN-EROFS-IMAGE\n", 0o644)
        .file_owned("work/owned", b"owned by 1000", 0o640, 1000, 1000)
        .tar();
    vec![base, top]
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vpod-images-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lists a directory's entries (sorted file names), empty if missing.
pub fn list(dir: &Path) -> Vec<String> {
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
