//! While mkfs runs over an unpacked image, no other user can reach the tree: not its setuid-root
//! programs, not its device nodes. A stand-in `mkfs.erofs` first in PATH looks at the tree as
//! `nobody` (setpriv), then runs the real one. Its own test binary: it changes PATH.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use vpod_images::{import, FsType, Store};

#[test]
fn the_unpacked_tree_is_unreachable_by_other_users_while_mkfs_runs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (device nodes, setpriv)");
        return;
    }
    let real = [
        "/usr/bin/mkfs.erofs",
        "/usr/sbin/mkfs.erofs",
        "/sbin/mkfs.erofs",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .expect("erofs-utils is installed");
    let t = TempDir::new("private-tree");
    // Everyone may traverse the temp dir itself: only the store's modes stand in the way.
    std::fs::set_permissions(&t.0, PermissionsExt::from_mode(0o755)).unwrap();
    let bin = t.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let report = t.path("report");
    let script = format!(
        r#"#!/bin/sh
# mkfs.erofs [--quiet] OUT TREE: the tree is the last argument.
for tree; do :; done
as_nobody() {{ setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@" >/dev/null 2>&1; }}
{{
  echo "tree-root $(stat -c %a "$tree")"
  echo "work-dir $(stat -c %a "$tree/..")"
  echo "work $(stat -c %a "$tree/../..")"
  echo "store $(stat -c %a "$tree/../../..")"
  as_nobody stat "$tree/bin/su"; echo "nobody-stat-su $?"
  as_nobody "$tree/bin/su"; echo "nobody-exec-su $?"
  as_nobody sh -c "echo x > '$tree/dev/null'"; echo "nobody-write-dev $?"
  as_nobody ls "$tree/../.."; echo "nobody-ls-work $?"
  test -u "$tree/bin/su"; echo "setuid-present $?"
}} > {report}
exec {real} "$@"
"#,
        report = report.display()
    );
    let fake = bin.join("mkfs.erofs");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));

    let layer = Layer::new()
        .dir("bin", 0o755)
        .file("bin/su", b"#!/bin/sh\nid -u\n", 0o4755)
        .dir("dev", 0o755)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .tar();
    let layout = t.path("layout");
    let md = write_layout(&layout, &[layer], Compression::Gzip, "x");
    let store = Store::open(&t.path("root")).unwrap();
    import(&store, &layout, None).unwrap();
    let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
    assert!(img.built);

    let got = std::fs::read_to_string(&report).expect("the stand-in mkfs.erofs ran");
    eprintln!("{got}");
    for want in [
        "tree-root 755",
        "work-dir 700",
        "work 700",
        "store 700",
        "setuid-present 0",
    ] {
        assert!(got.lines().any(|l| l == want), "want {want:?} in:\n{got}");
    }
    for probe in [
        "nobody-stat-su",
        "nobody-exec-su",
        "nobody-write-dev",
        "nobody-ls-work",
    ] {
        let line = got
            .lines()
            .find(|l| l.starts_with(probe))
            .unwrap_or_else(|| panic!("{probe} missing:\n{got}"));
        assert_ne!(line, format!("{probe} 0"), "nobody could: {line}\n{got}");
    }
}
