//! Image import as an attack surface: the store is private to root, a failed import names
//! nothing, unpacked size is bounded, and no layer writes (or removes, or touches) anything
//! outside its root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use vpod_images::unpack::Unpacker;
use vpod_images::{
    import, import_and_build, unpack_tar, Digest, Error, FsType, Store, UnpackLimits,
};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Every directory under (and including) `dir` is 0700, every file 0600.
fn assert_private_tree(dir: &Path) {
    let m = std::fs::symlink_metadata(dir).unwrap();
    if m.is_dir() {
        assert_eq!(mode(dir), 0o700, "{} is not 0700", dir.display());
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            assert_private_tree(&e.path());
        }
    } else {
        assert_eq!(mode(dir), 0o600, "{} is not 0600", dir.display());
    }
}

#[test]
fn the_store_is_private_whatever_the_umask_and_an_old_store_is_fixed() {
    let t = TempDir::new("private");
    // An existing store from before, with 0755 dirs and a 0644 refs.json.
    let images = t.path("root/images");
    for d in [
        "",
        "blobs",
        "blobs/sha256",
        "ingest",
        "disks",
        "leases",
        "work",
    ] {
        std::fs::create_dir_all(images.join(d)).unwrap();
        std::fs::set_permissions(images.join(d), PermissionsExt::from_mode(0o755)).unwrap();
    }
    // The most permissive umask: nothing may depend on it. (Process-wide: this binary's other
    // tests only get more permissive defaults, which they must not rely on either.)
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let store = Store::open(&t.path("root")).unwrap();
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "p");
    import(&store, &layout, None).unwrap();
    let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
    store.lease(&md, "pod-1").unwrap();
    nix::sys::stat::umask(old);

    assert!(img.path.starts_with(&images));
    assert_eq!(mode(&img.path), 0o600);
    assert_eq!(mode(&images.join("refs.json")), 0o600);
    assert_private_tree(&images);
}

#[test]
fn a_failed_build_names_nothing_and_keeps_the_old_name() {
    let t = TempDir::new("failed-import");
    let store = Store::open(&t.path("root")).unwrap();
    // A good image under the tag first.
    let good = t.path("good");
    let good_md = write_layout(&good, &busybox_layers(), Compression::Gzip, "t");
    import_and_build(&store, &good, Some("example.com/app:1"), FsType::Erofs).unwrap();
    assert_eq!(store.resolve("example.com/app:1").unwrap(), good_md);

    // Then one whose layer doesn't unpack, under the same tag and a new one.
    let bad = t.path("bad");
    write_layout(
        &bad,
        &[Layer::new().raw_file("../escape", b"x").tar()],
        Compression::Gzip,
        "t",
    );
    let e = import_and_build(&store, &bad, Some("example.com/app:1"), FsType::Erofs).unwrap_err();
    assert!(matches!(e, Error::BadLayerEntry { .. }), "{e}");
    assert_eq!(store.resolve("example.com/app:1").unwrap(), good_md);
    let e = import_and_build(&store, &bad, None, FsType::Erofs).unwrap_err();
    assert!(matches!(e, Error::BadLayerEntry { .. }), "{e}");
    let refs = store.refs().unwrap();
    assert_eq!(
        refs.keys().cloned().collect::<Vec<_>>(),
        vec!["example.com/app:1".to_string()],
        "only the good image is named"
    );

    // An unpack limit is a failed build too.
    let small = Store::open(&t.path("root"))
        .unwrap()
        .with_unpack_limits(UnpackLimits {
            max_bytes: 1024,
            ..UnpackLimits::default()
        });
    let other = t.path("other");
    write_layout(&other, &busybox_layers(), Compression::Zstd, "o");
    let e = import_and_build(&small, &other, Some("example.com/big:1"), FsType::Erofs).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
    assert!(small.resolve("example.com/big:1").is_err());
    assert_eq!(list(&store.dir().join("work")), Vec::<String>::new());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    compress(data, Compression::Gzip).0
}

#[test]
fn a_gzip_bomb_stops_at_the_size_limit_with_a_clear_error() {
    let t = TempDir::new("bomb");
    // 256 MiB of zeros: about 256 KiB gzipped.
    let bomb = Layer::new()
        .dir("data", 0o755)
        .file("data/zeros", &vec![0u8; 256 << 20], 0o644)
        .tar();
    let layout = t.path("layout");
    let md = write_layout(&layout, &[bomb], Compression::Gzip, "bomb");
    let store = Store::open(&t.path("root"))
        .unwrap()
        .with_unpack_limits(UnpackLimits {
            max_bytes: 16 << 20,
            ..UnpackLimits::default()
        });
    import(&store, &layout, None).unwrap();
    let e = store.ensure_block_image(&md, FsType::Erofs).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{s}");
    assert!(
        s.contains("max_bytes") && s.contains(&(16u64 << 20).to_string()),
        "{s}"
    );
    assert!(s.contains("data/zeros"), "names the entry: {s}");
    assert!(store.cached_block_image(&md).unwrap().is_none());
    assert_eq!(list(&store.dir().join("work")), Vec::<String>::new());
    // Summed over layers: two 10 MiB files in two layers go over 16 MiB.
    let a = Layer::new().file("a", &vec![0u8; 10 << 20], 0o644).tar();
    let b = Layer::new().file("b", &vec![0u8; 10 << 20], 0o644).tar();
    let root = t.path("two");
    std::fs::create_dir(&root).unwrap();
    let mut u = Unpacker::with_limits(&root, store.unpack_limits());
    u.apply(&Digest::of(&a), &gzip(&a)[..]).unwrap();
    let e = u.apply(&Digest::of(&b), &gzip(&b)[..]).unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
}

#[test]
fn sparse_files_count_at_their_full_size() {
    let t = TempDir::new("sparse");
    // A GNU sparse file claiming 256 MiB with one 512-byte block at its end.
    let real = 256u64 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    {
        let g = h.as_gnu_mut().unwrap();
        g.set_real_size(real);
        g.sparse[0].set_offset(real - 512);
        g.sparse[0].set_length(512);
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "sparse", &[7u8; 512][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let root = t.path("root");
    std::fs::create_dir(&root).unwrap();
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let e = unpack_tar(&tar[..], &root, limits).unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
    // Within the limit it unpacks, at its full size.
    let ok = t.path("ok");
    std::fs::create_dir(&ok).unwrap();
    let stats = unpack_tar(&tar[..], &ok, UnpackLimits::default()).unwrap();
    assert_eq!(stats.bytes, real);
    assert_eq!(std::fs::metadata(ok.join("sparse")).unwrap().len(), real);
}

#[test]
fn entry_count_long_names_and_trailing_data_are_bounded() {
    let t = TempDir::new("counts");
    let mut l = Layer::new();
    for i in 0..100 {
        l = l.file(&format!("f{i}"), b"", 0o644);
    }
    let many = l.tar();
    let root = t.path("many");
    std::fs::create_dir(&root).unwrap();
    let limits = UnpackLimits {
        max_entries: 50,
        ..UnpackLimits::default()
    };
    let e = unpack_tar(&many[..], &root, limits).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit_name: "max_entries",
                limit: 50,
                ..
            }
        ),
        "{e}"
    );

    // A GNU long name is read into memory whole: 4 MiB of it (gzipped to a few KiB) is refused
    // before the entry is seen, with 1 MiB allowed.
    let long = "a/".repeat(2 << 20);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, format!("{long}x"), &[][..]).unwrap();
    let tar = gzip(&b.into_inner().unwrap());
    assert!(tar.len() < 64 << 10);
    let limits = UnpackLimits {
        max_metadata_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let root = t.path("long");
    std::fs::create_dir(&root).unwrap();
    let e = unpack_tar(&tar[..], &root, limits).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit_name: "max_metadata_bytes",
                ..
            }
        ),
        "{e}"
    );

    // A path too long for Linux is refused, and the message stays short.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "b/".repeat(3000) + "x", &[][..])
        .unwrap();
    let root = t.path("path-max");
    std::fs::create_dir(&root).unwrap();
    let e = unpack_tar(&b.into_inner().unwrap()[..], &root, limits).unwrap_err();
    let s = e.to_string();
    assert!(s.len() < 1024 && s.contains("PATH_MAX"), "{s}");

    // Data after the end of the archive is read (the blob hash covers it), but not without end.
    let mut tail = Layer::new().file("f", b"f", 0o644).tar();
    tail.extend(vec![0u8; 4 << 20]);
    let root = t.path("tail");
    std::fs::create_dir(&root).unwrap();
    let e = unpack_tar(&gzip(&tail)[..], &root, limits).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit_name: "max_metadata_bytes",
                ..
            }
        ),
        "{e}"
    );
    // ...while the usual padding is fine.
    let root = t.path("tail-ok");
    std::fs::create_dir(&root).unwrap();
    let mut ok = Layer::new().file("f", b"f", 0o644).tar();
    ok.extend(vec![0u8; 20 << 10]);
    unpack_tar(&gzip(&ok)[..], &root, limits).unwrap();
}

fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<(), Error> {
    let mut u = Unpacker::new(root);
    for l in layers {
        u.apply(&Digest::of(l), &l[..])?;
    }
    u.finish()
}

#[test]
fn an_opaque_dir_turned_symlink_removes_nothing_outside() {
    let t = TempDir::new("opaque-escape");
    let outside = t.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"host file").unwrap();
    let root = t.path("rootfs");
    std::fs::create_dir(&root).unwrap();
    // The marker, then the same layer makes the dir a symlink to a host path.
    let res = apply(
        &root,
        &[
            Layer::new()
                .dir("c", 0o755)
                .file("c/low", b"l", 0o644)
                .tar(),
            Layer::new()
                .file("c/.wh..wh..opq", b"", 0o644)
                .symlink("c", outside.to_str().unwrap())
                .tar(),
        ],
    );
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        std::fs::read(outside.join("keep")).unwrap(),
        b"host file",
        "a host file was removed"
    );
    assert_eq!(
        std::fs::read_link(root.join("c")).unwrap(),
        outside,
        "the symlink itself is there"
    );
}

#[test]
fn directory_times_are_never_set_through_a_symlink() {
    let t = TempDir::new("mtime-escape");
    let outside = t.path("outside");
    std::fs::create_dir_all(outside.join("b")).unwrap();
    let before = std::fs::metadata(outside.join("b")).unwrap().mtime();
    let root = t.path("rootfs");
    std::fs::create_dir(&root).unwrap();
    apply(
        &root,
        &[
            Layer::new().dir("a", 0o755).dir("a/b", 0o755).tar(),
            Layer::new().symlink("a", outside.to_str().unwrap()).tar(),
        ],
    )
    .unwrap();
    let after = std::fs::metadata(outside.join("b")).unwrap().mtime();
    assert_ne!(after, 1_700_000_000, "the layer's mtime reached a host dir");
    assert_eq!(after, before);
}

#[test]
fn links_whiteouts_and_replacements_stay_inside() {
    let t = TempDir::new("inside");
    let outside = t.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let host_file = outside.join("secret");
    std::fs::write(&host_file, b"secret").unwrap();
    std::fs::set_permissions(&host_file, PermissionsExt::from_mode(0o600)).unwrap();
    let out = outside.to_str().unwrap();
    let root = t.path("rootfs");
    std::fs::create_dir(&root).unwrap();
    let fresh = |n: &str| {
        let p = t.path(n);
        std::fs::create_dir(&p).unwrap();
        p
    };

    // A hard link through a parent symlink that climbs out: refused.
    let e = apply(
        &fresh("r1"),
        &[Layer::new()
            .symlink("up", "../../..")
            .hardlink("hl", "up/etc/passwd")
            .tar()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");

    // A hard link to a symlink that points at a host file links the symlink, not the file.
    let r = fresh("r2");
    apply(
        &r,
        &[Layer::new()
            .symlink("s", &format!("{out}/secret"))
            .hardlink("hl", "s")
            .tar()],
    )
    .unwrap();
    assert!(std::fs::symlink_metadata(r.join("hl"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::metadata(&host_file).unwrap().nlink(), 1);

    // A hard link through an absolute symlinked parent: that is the image's own path.
    let e = apply(
        &fresh("r3"),
        &[Layer::new()
            .symlink("abs", out)
            .hardlink("hl", "abs/secret")
            .tar()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");

    // A whiteout through a symlink to a host dir removes nothing there.
    apply(
        &fresh("r4"),
        &[
            Layer::new().symlink("s", out).tar(),
            Layer::new().file("s/.wh.secret", b"", 0o644).tar(),
        ],
    )
    .unwrap();
    let e = apply(
        &fresh("r5"),
        &[
            Layer::new().symlink("s", "../../../..").tar(),
            Layer::new().file("s/.wh.secret", b"", 0o644).tar(),
        ],
    )
    .unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");
    assert!(host_file.exists());

    // Files, dirs and modes over a symlink to a host path replace the symlink.
    let r = fresh("r6");
    apply(
        &r,
        &[
            Layer::new()
                .symlink("f", &format!("{out}/secret"))
                .symlink("d", out)
                .tar(),
            Layer::new()
                .file("f", b"image file", 0o4777)
                .dir("d", 0o777)
                .tar(),
        ],
    )
    .unwrap();
    assert_eq!(std::fs::read(&host_file).unwrap(), b"secret");
    assert_eq!(mode(&host_file), 0o600);
    assert_eq!(mode(&outside), 0o755);
    assert_eq!(std::fs::read(r.join("f")).unwrap(), b"image file");

    // A symlink loop is an error, not a hang.
    let e = apply(
        &fresh("r7"),
        &[Layer::new()
            .symlink("l1", "l2")
            .symlink("l2", "l1")
            .file("l1/x", b"", 0o644)
            .tar()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("too many levels"), "{e}");
    assert_eq!(list(&root), Vec::<String>::new());
    assert_eq!(list(&outside), vec!["secret"]);
}

#[test]
fn unpack_tar_is_the_one_call_entry_point() {
    let t = TempDir::new("entry");
    let root = t.path("root");
    std::fs::create_dir(&root).unwrap();
    let l = Layer::new().dir("a", 0o755).file("a/b", b"hi", 0o644).tar();
    let stats = unpack_tar(&gzip(&l)[..], &root, UnpackLimits::default()).unwrap();
    assert_eq!((stats.entries, stats.bytes), (2, 2));
    assert_eq!(std::fs::read(root.join("a/b")).unwrap(), b"hi");
    // Garbage is an error, never a panic.
    assert!(unpack_tar(&[0x1f, 0x8b, 1, 2, 3][..], &root, UnpackLimits::default()).is_err());
}
