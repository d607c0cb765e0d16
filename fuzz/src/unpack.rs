//! `unpack`: arbitrary bytes as a layer (tar, or gzip/zstd compressed: the unpacker sniffs) →
//! the images crate's unpacker into a fresh directory, within small limits.
//!
//! The unpacker runs as root here (mknod, chown, set-id bits), on input made to break it, so
//! the process first puts itself in a mount namespace of its own where every mount is
//! read-only except the temp dir and the dirs libFuzzer writes (corpus, artifacts): an escape
//! that this target doesn't notice still can't touch the host. An entry written next to the
//! unpack root (the likely shape of an escape) fails the input.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use vpod_images::unpack::{unpack_tar, UnpackLimits};

pub const LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 64 << 20,
    max_entries: 4096,
    max_metadata_bytes: 1 << 20,
};

fn c(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// What libFuzzer may write: the temp dir, corpus dirs given as arguments, artifact dirs.
fn writable() -> Vec<PathBuf> {
    let mut v = vec![std::env::temp_dir()];
    for a in std::env::args().skip(1) {
        let path = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_dir() {
                p
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        };
        if let Some(p) = a.strip_prefix("-artifact_prefix=") {
            let _ = std::fs::create_dir_all(path(p));
            v.push(path(p));
        } else if let Some(p) = a.strip_prefix("-exact_artifact_path=") {
            v.push(path(p));
        } else if !a.starts_with('-') && Path::new(&a).is_dir() {
            v.push(PathBuf::from(a));
        }
    }
    v.into_iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

fn read_only_host() -> Result<(), String> {
    let keep = writable();
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: mount syscalls on NUL-terminated paths we own; results checked.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err("unshare(CLONE_NEWNS)"));
        }
        let root = c(Path::new("/"));
        let none = std::ptr::null();
        if libc::mount(
            none,
            root.as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ) != 0
        {
            return Err(err("make / private"));
        }
        for p in &keep {
            let p = c(p);
            if libc::mount(p.as_ptr(), p.as_ptr(), none, libc::MS_BIND, none.cast()) != 0 {
                return Err(err("bind a writable dir"));
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(mp), Some(opts)) = (f.get(4), f.get(5)) else {
                continue;
            };
            let mp = PathBuf::from(mp.replace("\\040", " "));
            if keep.contains(&mp) {
                continue;
            }
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            for (o, bit) in [
                ("nosuid", libc::MS_NOSUID),
                ("nodev", libc::MS_NODEV),
                ("noexec", libc::MS_NOEXEC),
                ("noatime", libc::MS_NOATIME),
                ("nodiratime", libc::MS_NODIRATIME),
                ("relatime", libc::MS_RELATIME),
            ] {
                if opts.split(',').any(|x| x == o) {
                    flags |= bit;
                }
            }
            let m = c(&mp);
            if libc::mount(none, m.as_ptr(), none, flags, none.cast()) != 0 && mp == Path::new("/")
            {
                return Err(err("remount / read-only"));
            }
        }
    }
    Ok(())
}

static BASE: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_base() {
    if let Some(b) = BASE.get() {
        let _ = std::fs::remove_dir_all(b);
    }
}

fn base() -> &'static Path {
    BASE.get_or_init(|| {
        match read_only_host() {
            Ok(()) => {
                // The protection holds: the host's root takes no new file.
                let probe = Path::new("/.vpod-fuzz-unpack-probe");
                if std::fs::write(probe, "").is_ok() {
                    let _ = std::fs::remove_file(probe);
                    panic!("unpack fuzz target: / is still writable after remounting it");
                }
            }
            // Not root (nothing to protect beyond what the user can write anyway), or no
            // namespaces: say so and go on.
            Err(e) => eprintln!("unpack fuzz target: host not made read-only ({e})"),
        }
        let b = std::env::temp_dir().join(format!("vpod-fuzz-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).expect("unpack fuzz dir");
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(remove_base) };
        b
    })
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = base();
    let name = N.fetch_add(1, Ordering::Relaxed).to_string();
    let work = base.join(&name);
    let root = work.join("root");
    std::fs::create_dir_all(&root).expect("unpack root");
    let _ = unpack_tar(data, &root, LIMITS);
    let beside = names(&work);
    let around = names(base);
    let _ = std::fs::remove_dir_all(&work);
    assert_eq!(beside, ["root"], "the unpacker wrote next to its root");
    assert!(
        around.iter().all(|n| *n == name),
        "the unpacker wrote outside its root: {around:?}"
    );
}
