//! `make bench-images`: time and disk size to turn generated images (~10 MB, 100 MB, 1 GB of
//! files: many small, a few large; two gzip layers, the top one overwriting and whiting out part
//! of the base) into erofs block images, beside the floor measured in the same run: `mkfs.erofs`
//! alone on the already unpacked tree. Also the second use of an image (cache hit).
//!
//! `BENCH_IMAGES_MB` (default `10,100,1000`) picks the sizes; `BENCH_IMAGES_DIR` where the store
//! and trees live (default `target/bench/images-work`; a tmpfs such as /dev/shm takes the disk's
//! writeback out of the figures). Table on stdout, JSON in `target/bench/images.json`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::Serialize;
use vpod_benches::{out_dir, row};
use vpod_images::oci::{self, Descriptor, Manifest};
use vpod_images::unpack::Unpacker;
use vpod_images::{import, Digest, FsType, Store};

/// Deterministic, half-compressible content (xorshift bytes and repeated text).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            if self.next().is_multiple_of(2) {
                v.extend_from_slice(&self.next().to_le_bytes());
            } else {
                v.extend_from_slice(b"vpod image bench text ");
            }
        }
        v.truncate(n);
        v
    }
}

fn entry(b: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn gz_layer(
    out: &Path,
    fill: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>),
) -> (Digest, u64) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    fill(&mut b);
    b.into_inner().unwrap().finish().unwrap();
    let data = std::fs::read(out).unwrap();
    (Digest::of(&data), data.len() as u64)
}

/// Writes an OCI layout of about `mb` MiB of files. Returns (file count, layout bytes).
fn generate(dir: &Path, mb: u64) -> (u64, u64) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let total = mb << 20;
    let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ mb);
    let mut files = 0u64;
    // 60% of the bytes in small files (1-32 KiB) across 100-file dirs, 40% in a few large ones.
    let small_budget = total * 6 / 10;
    let large = (mb / 25).clamp(2, 16);
    let tmp = dir.join("layer.tmp");
    let (base, base_size) = gz_layer(&tmp, |b| {
        let mut used = 0;
        while used < small_budget {
            let n = 1024 + (g.next() % (31 * 1024)) as usize;
            entry(
                b,
                &format!("usr/share/d{}/f{}", files / 100, files),
                &g.bytes(n),
            );
            used += n as u64;
            files += 1;
        }
        for i in 0..large {
            let n = ((total - small_budget) / large) as usize;
            entry(b, &format!("opt/big/blob{i}"), &g.bytes(n));
            files += 1;
        }
    });
    std::fs::rename(&tmp, blobs.join(base.hex())).unwrap();
    let (top, top_size) = gz_layer(&tmp, |b| {
        for i in (0..files.min(2000)).step_by(10) {
            entry(
                b,
                &format!("usr/share/d{}/f{i}", i / 100),
                b"overwritten by the top layer",
            );
        }
        entry(b, "usr/share/d1/.wh.f101", b"");
        entry(b, "etc/config", b"top layer file\n");
    });
    std::fs::rename(&tmp, blobs.join(top.hex())).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let cd = Digest::of(&config);
    std::fs::write(blobs.join(cd.hex()), &config).unwrap();
    let d = |media_type: &str, digest: Digest, size: u64| Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        platform: None,
        annotations: Default::default(),
    };
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: d(oci::OCI_CONFIG, cd, config.len() as u64),
        layers: vec![
            d(oci::OCI_LAYER_GZIP, base, base_size),
            d(oci::OCI_LAYER_GZIP, top, top_size),
        ],
    };
    let mb_ = serde_json::to_vec(&m).unwrap();
    let md = Digest::of(&mb_);
    std::fs::write(blobs.join(md.hex()), &mb_).unwrap();
    let mut desc = d(oci::OCI_MANIFEST, md, mb_.len() as u64);
    desc.annotations.insert(
        "org.opencontainers.image.ref.name".into(),
        format!("bench-{mb}"),
    );
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [desc]})).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (files, base_size + top_size)
}

#[derive(Serialize)]
struct Result_ {
    target_mb: u64,
    files: u64,
    layers_bytes: u64,
    import_ms: f64,
    vpod_ms: f64,
    vpod_unpack_ms: f64,
    vpod_mkfs_ms: f64,
    vpod_disk_bytes: u64,
    floor_mkfs_ms: f64,
    floor_disk_bytes: u64,
    ratio: f64,
    second_use_ms: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        eprintln!("bench images: mkfs.erofs is missing (apt-get install erofs-utils)");
        std::process::exit(1);
    }
    let sizes: Vec<u64> = std::env::var("BENCH_IMAGES_MB")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let work = std::env::var_os("BENCH_IMAGES_DIR")
        .map(|d| std::path::PathBuf::from(d).join("vpod-bench-images"))
        .unwrap_or_else(|| out_dir().join("images-work"));
    let _ = std::fs::remove_dir_all(&work);
    let mut results = Vec::new();
    println!("image -> erofs block image (vpod: verify + decompress + unpack + mkfs.erofs + fsync), floor: mkfs.erofs alone on the unpacked tree");
    row(&[
        "image".into(),
        "files".into(),
        "layers MB".into(),
        "vpod ms".into(),
        "unpack ms".into(),
        "floor ms".into(),
        "ratio".into(),
        "disk MB".into(),
        "floor MB".into(),
        "2nd use ms".into(),
    ]);
    for mb in sizes {
        let dir = work.join(format!("{mb}"));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        let (files, layers_bytes) = generate(&layout, mb);
        let store = Store::open(&dir.join("root")).unwrap();
        let t = Instant::now();
        let imported = import(&store, &layout, None).unwrap();
        let import_ms = ms(t);
        std::fs::remove_dir_all(&layout).unwrap();
        let md = imported[0].manifest.clone();

        // Same page-cache state for both: the layers (vpod's input) were just written.
        let t = Instant::now();
        let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
        let vpod_ms = ms(t);
        assert!(img.built);
        let t = Instant::now();
        let again = store.ensure_block_image(&md, FsType::Erofs).unwrap();
        let second_use_ms = ms(t);
        assert!(!again.built);

        // Floor: the unpacked tree (made untimed), then mkfs.erofs alone.
        let tree = dir.join("tree");
        std::fs::create_dir(&tree).unwrap();
        let mut u = Unpacker::new(&tree);
        let (_, m) = store.manifest(&md).unwrap();
        for l in &m.layers {
            u.apply(&l.digest, store.open_blob(&l.digest).unwrap())
                .unwrap();
        }
        u.finish().unwrap();
        let floor_img = dir.join("floor.erofs");
        let t = Instant::now();
        let st = Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&floor_img)
            .arg(&tree)
            .status()
            .unwrap();
        let floor_mkfs_ms = ms(t);
        assert!(st.success());
        let floor_disk_bytes = std::fs::metadata(&floor_img).unwrap().len();
        let r = Result_ {
            target_mb: mb,
            files,
            layers_bytes,
            import_ms,
            vpod_ms,
            vpod_unpack_ms: img.stats.unpack_ms,
            vpod_mkfs_ms: img.stats.mkfs_ms,
            vpod_disk_bytes: img.info.disk_size,
            floor_mkfs_ms,
            floor_disk_bytes,
            ratio: vpod_ms / floor_mkfs_ms,
            second_use_ms,
        };
        let mbf = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
        row(&[
            format!("{mb} MB"),
            files.to_string(),
            mbf(layers_bytes),
            format!("{:.0}", r.vpod_ms),
            format!("{:.0}", r.vpod_unpack_ms),
            format!("{:.0}", r.floor_mkfs_ms),
            format!("{:.2}x", r.ratio),
            mbf(r.vpod_disk_bytes),
            mbf(r.floor_disk_bytes),
            format!("{:.2}", r.second_use_ms),
        ]);
        results.push(r);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let _ = std::fs::remove_dir_all(&work);
    let out = out_dir().join("images.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({"work_dir": work, "images": results}))
            .unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.display());
}
