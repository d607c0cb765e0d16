//! Content store, import, unpack and block images, on the host (no VM).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::Command;

use common::*;
use vpod_images::unpack::Unpacker;
use vpod_images::{import, Digest, Error, FsType, Store};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Extracts an erofs image with fsck.erofs (checks its integrity on the way).
fn extract_erofs(img: &std::path::Path, out: &std::path::Path) {
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.display()))
        .arg(img)
        .output()
        .expect("fsck.erofs (erofs-utils) runs");
    assert!(
        st.status.success(),
        "fsck.erofs: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn assert_store_clean(store: &Store) {
    assert_eq!(
        list(&store.dir().join("ingest")),
        Vec::<String>::new(),
        "temp files left"
    );
    assert_eq!(
        list(&store.dir().join("work")),
        Vec::<String>::new(),
        "work trees left"
    );
}

#[test]
fn busybox_layout_imports_and_becomes_a_cached_erofs_image() {
    let t = TempDir::new("busybox");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "v1");
    let store = Store::open(&t.path("root")).unwrap();
    let imported = import(&store, &layout, None).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "localhost/layout:v1");
    assert_eq!(imported[0].manifest, md);
    assert_eq!(store.resolve("localhost/layout:v1").unwrap(), md);
    assert_eq!(store.resolve(&md.hex()[..12]).unwrap(), md);

    let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
    assert!(img.built);
    assert!(img.path.ends_with(format!("disks/{}.erofs", md.hex())));
    assert_eq!(img.info.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(img.info.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(img.info.config.user.as_deref(), Some("1000:1000"));
    assert!(img
        .info
        .config
        .exposed_ports
        .as_ref()
        .unwrap()
        .contains_key("8080/tcp"));
    assert_eq!(
        img.info.config.labels.as_ref().unwrap()["org.vpod.test"],
        "yes"
    );
    assert_eq!(img.info.layers.len(), 2);
    // erofs superblock magic at 1024
    let data = std::fs::read(&img.path).unwrap();
    assert_eq!(&data[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());

    let out = t.path("extracted");
    extract_erofs(&img.path, &out);
    assert_eq!(
        std::fs::read(out.join("etc/hello.txt")).unwrap(),
        b"HELLO-FROM-AN-EROFS-IMAGE\n",
        "the upper layer wins"
    );
    assert_eq!(
        std::fs::read(out.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(out.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let m = std::fs::metadata(out.join("bin/busybox")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    if is_root() {
        let m = std::fs::metadata(out.join("work/owned")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1000, 0o640));
    }

    // Second use: no conversion at all.
    let again = store.block_image("localhost/layout:v1").unwrap();
    assert!(!again.built);
    assert_eq!(again.path, img.path);
    assert_eq!(again.info, img.info);
    assert_store_clean(&store);
}

#[test]
fn two_builders_at_once_build_one_image() {
    let t = TempDir::new("race");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Zstd, "race");
    let root = t.path("root");
    import(&Store::open(&root).unwrap(), &layout, None).unwrap();
    let results: Vec<_> = (0..3)
        .map(|_| {
            let store = Store::open(&root).unwrap();
            let md = md.clone();
            std::thread::spawn(move || store.ensure_block_image(&md, FsType::Erofs).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.built).count(),
        1,
        "built exactly once"
    );
    assert!(results.iter().all(|r| r.path == results[0].path));
    assert_store_clean(&Store::open(&root).unwrap());
}

#[test]
fn ext4_fallback_builds_a_mountable_tree() {
    let t = TempDir::new("ext4");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::None, "x");
    let store = Store::open(&t.path("root")).unwrap();
    import(&store, &layout, None).unwrap();
    let img = store.ensure_block_image(&md, FsType::Ext4).unwrap();
    assert!(img.path.to_string_lossy().ends_with(".ext4"));
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/hello.txt"])
        .arg(&img.path)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO-FROM-AN-EROFS-IMAGE\n"
    );
}

#[test]
fn whiteouts_opaque_dirs_links_devices_xattrs_and_modes() {
    let t = TempDir::new("unpack");
    let root = t.path("rootfs");
    std::fs::create_dir(&root).unwrap();
    let l1 = Layer::new()
        .dir("a", 0o755)
        .file("a/x", b"x", 0o644)
        .file("a/y", b"y", 0o644)
        .dir("c", 0o700)
        .file("c/old", b"old", 0o644)
        .file("c/older", b"older", 0o644)
        .file("suid", b"#!/bin/sh\n", 0o4755)
        .hardlink("a/x-link", "a/x")
        .symlink("rel", "a/y")
        .file_xattr("xa", b"with xattr", "user.vpod", b"hello")
        .device("dev-null", tar::EntryType::Char, 1, 3)
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .dir("gone-dir", 0o755)
        .file("gone-dir/inner", b"i", 0o644)
        .tar();
    let l2 = Layer::new()
        .file("a/.wh.x", b"", 0o644)
        .file(".wh.gone-dir", b"", 0o644)
        .dir("c", 0o755)
        .file("c/.wh..wh..opq", b"", 0o644)
        .file("c/new", b"new", 0o644)
        .file("rel", b"a file replaces the symlink", 0o600)
        .tar();
    let mut u = Unpacker::new(&root);
    let (g1, _) = compress(&l1, Compression::Gzip);
    u.apply(&Digest::of(&g1), &g1[..]).unwrap();
    let (z2, _) = compress(&l2, Compression::Zstd);
    u.apply(&Digest::of(&z2), &z2[..]).unwrap();
    u.finish().unwrap();

    assert!(!root.join("a/x").exists(), "whiteout removed a/x");
    assert_eq!(std::fs::read(root.join("a/y")).unwrap(), b"y");
    assert_eq!(
        std::fs::read(root.join("a/x-link")).unwrap(),
        b"x",
        "hard link outlives its whited-out twin"
    );
    assert!(
        !root.join("gone-dir").exists(),
        "whiteout removed a whole dir"
    );
    assert_eq!(
        list(&root.join("c")),
        vec!["new"],
        "opaque dir hides lower entries, keeps its own"
    );
    assert_eq!(
        std::fs::metadata(root.join("c")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read(root.join("rel")).unwrap(),
        b"a file replaces the symlink"
    );
    let suid = std::fs::metadata(root.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!(suid.mtime(), 1_700_000_000);
    assert_eq!(
        xattr::get(root.join("xa"), "user.vpod").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert!(std::fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    if is_root() {
        let dev = std::fs::symlink_metadata(root.join("dev-null")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
    }
}

#[test]
fn hard_link_shares_the_inode() {
    let t = TempDir::new("hardlink");
    let root = t.path("rootfs");
    std::fs::create_dir(&root).unwrap();
    let l = Layer::new()
        .file("f", b"data", 0o644)
        .hardlink("g", "f")
        .tar();
    let mut u = Unpacker::new(&root);
    u.apply(&Digest::of(&l), &l[..]).unwrap();
    let (a, b) = (
        std::fs::metadata(root.join("f")).unwrap(),
        std::fs::metadata(root.join("g")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
}

fn apply_err(root: &std::path::Path, layers: &[Vec<u8>]) -> Error {
    let mut u = Unpacker::new(root);
    for l in layers {
        if let Err(e) = u.apply(&Digest::of(l), &l[..]) {
            return e;
        }
    }
    panic!("the layers were accepted");
}

#[test]
fn entries_outside_the_root_are_refused() {
    let t = TempDir::new("escape");
    let root = t.path("a/b/c/rootfs");
    std::fs::create_dir_all(&root).unwrap();

    let e = apply_err(
        &root,
        &[Layer::new().raw_file("../../etc/passwd", b"pwned").tar()],
    );
    assert!(matches!(e, Error::BadLayerEntry { .. }), "{e}");
    assert!(e.to_string().contains("../../etc/passwd"), "{e}");
    assert!(e.to_string().contains("'..'"), "{e}");
    assert!(!t.path("a/b/etc/passwd").exists());

    let e = apply_err(
        &root,
        &[Layer::new()
            .raw_file("/etc/passwd-vpod-test", b"pwned")
            .tar()],
    );
    assert!(e.to_string().contains("absolute path"), "{e}");
    assert!(!std::path::Path::new("/etc/passwd-vpod-test").exists());

    // Through a symlink planted by a lower layer (or the same one).
    let e = apply_err(
        &root,
        &[
            Layer::new().symlink("esc", "../../../x").tar(),
            Layer::new().file("esc/pwned", b"pwned", 0o644).tar(),
        ],
    );
    assert!(e.to_string().contains("escapes the root"), "{e}");
    assert!(!t.path("a/x/pwned").exists());
    assert!(!t.path("a/x").exists());

    // A hard link may not point outside either.
    let e = apply_err(
        &root,
        &[Layer::new().hardlink("hl", "../../../../etc/passwd").tar()],
    );
    assert!(e.to_string().contains("'..'"), "{e}");

    // An absolute symlink means the container's root: it lands inside ours.
    let ok = t.path("ok");
    std::fs::create_dir(&ok).unwrap();
    let mut u = Unpacker::new(&ok);
    let l = Layer::new()
        .symlink("abs", "/")
        .file("abs/tmp-in-root", b"inside", 0o644)
        .tar();
    u.apply(&Digest::of(&l), &l[..]).unwrap();
    assert_eq!(std::fs::read(ok.join("tmp-in-root")).unwrap(), b"inside");
}

#[test]
fn a_corrupted_blob_is_detected_and_nothing_is_stored() {
    let t = TempDir::new("corrupt");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "c");
    let store = Store::open(&t.path("root")).unwrap();

    // In the layout: import refuses it.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(md.hex())).unwrap())
            .unwrap();
    let layer_digest: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let blob = layout.join("blobs/sha256").join(layer_digest.hex());
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let e = import(&store, &layout, None).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(layer_digest.as_str()), "{e}");
    assert!(store.refs().unwrap().is_empty());
    assert!(!store.has_blob(&layer_digest));
    assert_store_clean(&store);

    // In the store (bit rot after import): the block image build refuses it.
    std::fs::write(&blob, &good).unwrap();
    import(&store, &layout, None).unwrap();
    std::fs::write(store.blob_path(&layer_digest), &bad).unwrap();
    let e = store.ensure_block_image(&md, FsType::Erofs).unwrap_err();
    assert!(matches!(e, Error::BlobCorrupted { .. }), "{e}");
    assert!(store.cached_block_image(&md).unwrap().is_none());
    assert_eq!(
        list(&store.dir().join("disks"))
            .into_iter()
            .filter(|n| !n.ends_with(".lock"))
            .count(),
        0
    );
    assert_store_clean(&store);
}

#[test]
fn layout_tarball_imports_and_a_truncated_one_is_refused() {
    let t = TempDir::new("tarball");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "tarred");
    let tarball = t.path("img.tar");
    tar_dir(&layout, &tarball);

    let store = Store::open(&t.path("root")).unwrap();
    let imported = import(&store, &tarball, Some("example.com/busy/box:1")).unwrap();
    assert_eq!(imported[0].name, "example.com/busy/box:1");
    assert_eq!(imported[0].manifest, md);

    let data = std::fs::read(&tarball).unwrap();
    let cut = t.path("cut.tar");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let store2 = Store::open(&t.path("root2")).unwrap();
    let e = import(&store2, &cut, None).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(store2.refs().unwrap().is_empty());
    assert_store_clean(&store2);
}

#[test]
fn docker_save_archive_imports_with_its_repo_tag() {
    let t = TempDir::new("docker-save");
    let tarball = t.path("save.tar");
    write_docker_save(&tarball, &busybox_layers(), "busybox:vpod-test");
    let store = Store::open(&t.path("root")).unwrap();
    let imported = import(&store, &tarball, None).unwrap();
    assert_eq!(imported[0].name, "docker.io/library/busybox:vpod-test");
    let img = store.block_image("busybox:vpod-test").unwrap();
    let out = t.path("x");
    extract_erofs(&img.path, &out);
    assert_eq!(
        std::fs::read(out.join("etc/hello.txt")).unwrap(),
        b"HELLO-FROM-AN-EROFS-IMAGE\n"
    );
}

#[test]
fn unknown_manifest_media_type_is_refused() {
    let t = TempDir::new("mediatype");
    let layout = t.path("layout");
    write_layout(&layout, &busybox_layers(), Compression::Gzip, "m");
    // Rewrite the index to point at an artifact manifest of an unknown type.
    let art = br#"{"schemaVersion":2,"mediaType":"application/vnd.example.artifact.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let d = Digest::of(art);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), art).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.example.artifact.v1+json", "digest": d, "size": art.len()}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let store = Store::open(&t.path("root")).unwrap();
    let e = import(&store, &layout, None).unwrap_err();
    assert!(matches!(e, Error::UnknownMediaType { .. }), "{e}");
    assert!(store.refs().unwrap().is_empty());
}

#[test]
fn rm_refuses_while_leased_and_prune_frees_what_nothing_uses() {
    let t = TempDir::new("prune");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "p");
    let store = Store::open(&t.path("root")).unwrap();
    import(&store, &layout, None).unwrap();
    store.ensure_block_image(&md, FsType::Erofs).unwrap();
    let before = store.usage().unwrap();
    assert_eq!((before.images, before.blobs, before.disks), (1, 4, 1));

    // Nothing unreferenced yet.
    assert_eq!(store.prune().unwrap().blobs_removed, 0);

    store.lease(&md, "pod-1").unwrap();
    let e = store.remove("localhost/layout:p").unwrap_err();
    assert!(matches!(e, Error::InUse { .. }), "{e}");
    assert!(e.to_string().contains("pod-1"), "{e}");
    store.release(&md, "pod-1").unwrap();
    assert_eq!(
        store.remove("localhost/layout:p").unwrap(),
        vec!["localhost/layout:p"]
    );
    assert!(matches!(
        store.resolve("localhost/layout:p"),
        Err(Error::NotFound(_))
    ));

    let r = store.prune().unwrap();
    assert_eq!((r.blobs_removed, r.disks_removed), (4, 1));
    assert!(r.bytes_freed > before.blob_bytes);
    let after = store.usage().unwrap();
    assert_eq!((after.images, after.blobs, after.disks), (0, 0, 0));
}

#[test]
fn a_blob_with_the_wrong_digest_never_enters_the_store() {
    let t = TempDir::new("ingest");
    let store = Store::open(&t.path("root")).unwrap();
    let claimed = Digest::of(b"what the descriptor promised");
    let e = store
        .ingest(&b"something else"[..], Some(&claimed), None, "test blob")
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(!store.has_blob(&claimed));
    let e = store
        .ingest(
            &b"abc"[..],
            Some(&Digest::of(b"abc")),
            Some(4),
            "sized blob",
        )
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    assert_store_clean(&store);
}

/// A tmpfs of `size` mounted at a fresh dir; unmounted (lazily) on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new("tmpfs");
        nix::mount::mount(
            Some("tmpfs"),
            &dir.0,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount tmpfs");
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Incompressible bytes (xorshift), so a layer of them stays big once gzipped.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Neither a cached nor a partial block image of `md` (lock files aside) is left in the store.
fn assert_no_block_image(store: &Store, md: &Digest) {
    assert!(store.cached_block_image(md).unwrap().is_none());
    let disks: Vec<String> = list(&store.dir().join("disks"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(disks, Vec::<String>::new(), "no partial block image");
}

fn assert_no_space(e: &Error) {
    let s = e.to_string();
    eprintln!("full disk: {s}");
    assert!(
        s.to_lowercase().contains("no space left"),
        "ENOSPC not named: {s}"
    );
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing_half_written() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let t = TempDir::new("full");
    let fs = Tmpfs::mount("8m");
    let store = Store::open(&fs.dir.path("root")).unwrap();
    let blobs_before = list(&store.dir().join("blobs/sha256"));

    // 1. A layer blob bigger than the disk: the import fails while ingesting it.
    let big = Layer::new().file("noise", &noise(12 << 20), 0o644).tar();
    let layout = t.path("big");
    let md = write_layout(&layout, &[big], Compression::Gzip, "big");
    let e = import(&store, &layout, None).unwrap_err();
    assert_no_space(&e);
    assert!(
        store.refs().unwrap().is_empty(),
        "no ref for a failed import"
    );
    // Blobs committed before the disk filled (manifest, config) are whole and verified; the
    // layer that didn't fit is not there at all; prune frees the rest.
    let _ = md;
    for b in list(&store.dir().join("blobs/sha256")) {
        assert!(!blobs_before.contains(&b));
        store.verify_blob(&Digest::from_hex(&b).unwrap()).unwrap();
        let size = std::fs::metadata(store.dir().join("blobs/sha256").join(&b))
            .unwrap()
            .len();
        assert!(size < 1 << 20, "a partial layer blob {b} ({size} bytes)");
    }
    assert_store_clean(&store);

    // 2. Blobs that fit (zeros gzip to almost nothing) but a tree and block image that don't:
    //    the import succeeds, the build fails with ENOSPC and leaves no work tree, temp file
    //    or block image.
    let zeros = Layer::new()
        .dir("data", 0o755)
        .file("data/zeros", &vec![0u8; 12 << 20], 0o644)
        .tar();
    let layout = t.path("zeros");
    let md = write_layout(&layout, &[zeros], Compression::Gzip, "zeros");
    store.prune().unwrap();
    let imported = import(&store, &layout, None).unwrap();
    assert_eq!(imported[0].manifest, md);
    let e = store.ensure_block_image(&md, FsType::Erofs).unwrap_err();
    assert_no_space(&e);
    assert_no_block_image(&store, &md);
    assert_store_clean(&store);
    // The store still works: the image is intact and named.
    assert_eq!(store.resolve("localhost/zeros:zeros").unwrap(), md);
    store.verify_blob(&md).unwrap();

    // 3. The work tree fits but the block image beside it doesn't: mkfs fails with ENOSPC and
    //    its partial output is removed.
    let fs = Tmpfs::mount("7m");
    let store = Store::open(&fs.dir.path("root")).unwrap();
    let half = Layer::new()
        .dir("data", 0o755)
        .file("data/zeros", &vec![0u8; 4 << 20], 0o644)
        .tar();
    let layout = t.path("half");
    let md = write_layout(&layout, &[half], Compression::Gzip, "half");
    import(&store, &layout, None).unwrap();
    let e = store.ensure_block_image(&md, FsType::Erofs).unwrap_err();
    assert_no_space(&e);
    assert_no_block_image(&store, &md);
    assert_store_clean(&store);
}
