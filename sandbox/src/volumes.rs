//! Host-side volumes pushed into the guest: a host directory (kubelet's
//! secret or configMap dir, or a directory named on `vpod run`) is read into
//! memory and sent over the agent API. Nothing is written on the host; for
//! secrets nothing is written on any disk at all (they land in a guest
//! tmpfs).
//!
//! Kubelet updates these directories atomically by swapping its `..data`
//! symlink; [`watch`] polls the content and pushes a new generation when it
//! changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use vpod_agent_api::pb::{PutVolumeRequest, VolumeFile, VolumeMedium};

/// Largest volume pushed (kubelet caps a secret at 1 MiB; configMaps too).
pub const MAX_VOLUME_BYTES: u64 = 8 << 20;
/// Deepest directory nesting walked below a volume's root.
pub const MAX_VOLUME_DEPTH: usize = 32;
/// Most entries (files, dirs, links) walked in one volume.
pub const MAX_VOLUME_ENTRIES: usize = 16 << 10;
/// How often [`watch`] looks for changes.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// Why a host volume could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostVolumeError {
    /// A file or dir of it could not be read.
    #[error("volume {name}: read {path}: {source}")]
    Read {
        /// The volume.
        name: String,
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds more than [`MAX_VOLUME_BYTES`].
    #[error("volume {name}: {path} holds more than {MAX_VOLUME_BYTES} bytes")]
    TooBig {
        /// The volume.
        name: String,
        /// Its dir.
        path: PathBuf,
    },
    /// It nests deeper than [`MAX_VOLUME_DEPTH`].
    #[error("volume {name}: {path} nests directories deeper than {MAX_VOLUME_DEPTH}")]
    TooDeep {
        /// The volume.
        name: String,
        /// The dir too deep.
        path: PathBuf,
    },
    /// It holds more than [`MAX_VOLUME_ENTRIES`] entries.
    #[error("volume {name}: {path} holds more than {MAX_VOLUME_ENTRIES} entries")]
    TooMany {
        /// The volume.
        name: String,
        /// Its dir.
        path: PathBuf,
    },
}

/// A host directory pushed as a volume.
#[derive(Debug, Clone)]
pub struct HostVolume {
    /// The volume's name in the pod ([A-Za-z0-9_.-]{1,128}).
    pub name: String,
    /// The host dir.
    pub dir: PathBuf,
    /// Guest RAM (secrets) or the pod's disk (configMaps).
    pub medium: VolumeMedium,
}

/// One walk of a volume: every path is opened relative to the volume's root with
/// `RESOLVE_BENEATH`, so a symlink may lead anywhere inside the volume (kubelet's `..data`) and
/// nowhere outside it.
struct Walk<'a> {
    vol: &'a HostVolume,
    root: OwnedFd,
    files: BTreeMap<String, VolumeFile>,
    total: u64,
    entries: usize,
    /// (dev, ino) of the directories from the root to the one being walked: a symlink back to
    /// one of them is a loop.
    stack: Vec<(u64, u64)>,
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Opens `rel` (relative, never empty: "." for the root) beneath `root`.
fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    // openat2 refuses O_PATH with any flag but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW.
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    let how = OpenHow::new()
        .flags(flags | extra)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

impl Walk<'_> {
    fn err(&self, rel: &str) -> impl FnOnce(nix::Error) -> HostVolumeError {
        let name = self.vol.name.clone();
        let path = self.vol.dir.join(rel);
        move |e| HostVolumeError::Read {
            name,
            path,
            source: errno(e),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.vol.dir.join(rel)
    }

    /// Walks the directory at `rel` ("" for the root).
    fn dir(&mut self, rel: &str, depth: usize) -> Result<(), HostVolumeError> {
        let at = if rel.is_empty() { "." } else { rel };
        let fd = open_beneath(&self.root, at, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(self.err(at))?;
        let mut names = Vec::new();
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(self.err(at))?;
        for e in dir.iter() {
            let e = e.map_err(self.err(at))?;
            let name = e.file_name().to_bytes();
            // `.`, `..` and kubelet's bookkeeping (`..data`, `..2026_11_23_...`).
            if name.starts_with(b"..") || name == b"." {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_VOLUME_ENTRIES {
                return Err(HostVolumeError::TooMany {
                    name: self.vol.name.clone(),
                    path: self.vol.dir.clone(),
                });
            }
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        drop(dir);
        for name in names {
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            self.entry(&rel, depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, rel: &str, depth: usize) -> Result<(), HostVolumeError> {
        // O_PATH: look at what it is without opening it (a FIFO would block, a device act).
        let fd = match open_beneath(&self.root, rel, OFlag::O_PATH) {
            Ok(fd) => fd,
            // Leads outside the volume (EXDEV: absolute or `..` climbing out; ELOOP: a symlink
            // loop or a magic link), or is gone / dangling: not part of the volume.
            Err(Errno::EXDEV | Errno::ELOOP | Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(self.err(rel)(e)),
        };
        let st = fstat(&fd).map_err(self.err(rel))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let id = (st.st_dev, st.st_ino);
        if kind == SFlag::S_IFDIR {
            if self.stack.contains(&id) {
                // A symlink back up the tree: walked already.
                return Ok(());
            }
            if depth >= MAX_VOLUME_DEPTH {
                return Err(HostVolumeError::TooDeep {
                    name: self.vol.name.clone(),
                    path: self.path(rel),
                });
            }
            self.stack.push(id);
            let r = self.dir(rel, depth + 1);
            self.stack.pop();
            return r;
        }
        if kind != SFlag::S_IFREG {
            return Ok(());
        }
        drop(fd);
        let fd = match open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
            Ok(fd) => fd,
            Err(Errno::EXDEV | Errno::ELOOP | Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(self.err(rel)(e)),
        };
        let st = fstat(&fd).map_err(self.err(rel))?;
        if (st.st_dev, st.st_ino) != id {
            // Swapped between the two opens (kubelet mid-update): the next poll reads it.
            return Err(self.err(rel)(Errno::EAGAIN));
        }
        // Read what is there, not what stat said: one byte more than is left shows it is over.
        let left = MAX_VOLUME_BYTES - self.total;
        let data =
            read_capped(std::fs::File::from(fd), left).map_err(|source| HostVolumeError::Read {
                name: self.vol.name.clone(),
                path: self.path(rel),
                source,
            })?;
        let Some(data) = data else {
            return Err(HostVolumeError::TooBig {
                name: self.vol.name.clone(),
                path: self.vol.dir.clone(),
            });
        };
        self.total += data.len() as u64;
        self.files.insert(
            rel.to_owned(),
            VolumeFile {
                path: rel.to_owned(),
                data,
                mode: st.st_mode & 0o777,
            },
        );
        Ok(())
    }
}

/// Reads at most `cap` bytes of `r`; `None` if there are more.
pub fn read_capped(r: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= cap).then_some(data))
}

/// Reads the regular file `path` (not through a symlink) if it holds at most `cap` bytes.
pub fn read_file_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    read_capped(f, cap)?
        .ok_or_else(|| std::io::Error::other(format!("holds more than {cap} bytes")))
}

fn libc_flags() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits()
}

impl HostVolume {
    /// The directory's regular files, walked without leaving it: symlinks are followed only
    /// where they stay inside (kubelet's `..data` layout), others are not part of the volume, nor
    /// are devices, FIFOs and sockets; kubelet's `..`-prefixed bookkeeping entries are skipped.
    /// At most [`MAX_VOLUME_BYTES`] in [`MAX_VOLUME_ENTRIES`] entries [`MAX_VOLUME_DEPTH`] deep.
    pub fn read(&self) -> Result<Vec<VolumeFile>, HostVolumeError> {
        let root = nix::fcntl::open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| HostVolumeError::Read {
            name: self.name.clone(),
            path: self.dir.clone(),
            source: errno(e),
        })?;
        let st = fstat(&root).map_err(|e| HostVolumeError::Read {
            name: self.name.clone(),
            path: self.dir.clone(),
            source: errno(e),
        })?;
        let mut w = Walk {
            vol: self,
            root,
            files: BTreeMap::new(),
            total: 0,
            entries: 0,
            stack: vec![(st.st_dev, st.st_ino)],
        };
        w.dir("", 0)?;
        Ok(w.files.into_values().collect())
    }

    /// The agent's request that puts `files` (from [`HostVolume::read`]) in the volume.
    pub fn request(&self, files: Vec<VolumeFile>) -> PutVolumeRequest {
        PutVolumeRequest {
            name: self.name.clone(),
            medium: self.medium as i32,
            files,
            size_limit_bytes: 0,
            empty_dir: false,
        }
    }
}

/// A fingerprint of a file set, to notice changes without keeping copies.
pub fn fingerprint(files: &[VolumeFile]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.path.hash(&mut h);
        f.data.hash(&mut h);
        f.mode.hash(&mut h);
    }
    h.finish()
}

/// Where host volumes are pushed: a pod ([`crate::Pod`]), or a test's double.
pub trait VolumeTarget: Send + Sync {
    /// Why a push failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates or replaces the volume; returns its generation.
    fn put_volume(
        &self,
        req: PutVolumeRequest,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Whether the target is gone for good (the pod's VM ended): [`watch`] stops then.
    fn is_gone(&self) -> bool;
}

/// Pushes `vol` now; returns its fingerprint.
pub async fn push<T: VolumeTarget>(
    target: &T,
    vol: &HostVolume,
) -> Result<u64, PushError<T::Error>> {
    let files = vol.read()?;
    let fp = fingerprint(&files);
    target
        .put_volume(vol.request(files))
        .await
        .map_err(PushError::Put)?;
    Ok(fp)
}

/// Why a push failed: the host dir could not be read, or the target refused the volume.
#[derive(Debug, thiserror::Error)]
pub enum PushError<E> {
    /// Reading the host dir failed.
    #[error(transparent)]
    Host(#[from] HostVolumeError),
    /// The target (the pod's agent) refused the volume.
    #[error(transparent)]
    Put(E),
}

/// Re-pushes each volume whenever its host content changes, until the target
/// is gone. Read errors (kubelet mid-update, dir removed) are retried on
/// the next poll; `on_push` hears of every push.
pub async fn watch<T: VolumeTarget>(
    target: Arc<T>,
    vols: Vec<(HostVolume, u64)>,
    poll: Duration,
    on_push: impl Fn(&HostVolume, Result<u64, &PushError<T::Error>>) + Send + 'static,
) {
    let mut vols = vols;
    loop {
        tokio::time::sleep(poll).await;
        if target.is_gone() {
            return;
        }
        for (vol, last) in vols.iter_mut() {
            let Ok(files) = vol.read() else { continue };
            let fp = fingerprint(&files);
            if fp == *last {
                continue;
            }
            match target.put_volume(vol.request(files)).await {
                Ok(gen) => {
                    *last = fp;
                    on_push(vol, Ok(gen));
                }
                Err(e) => on_push(vol, Err(&PushError::Put(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_kubelet_style_dir() {
        let dir = std::env::temp_dir().join(format!("vpod-hostvol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gen = dir.join("..2026_11_23");
        std::fs::create_dir_all(gen.join("sub")).unwrap();
        std::fs::write(gen.join("token"), "s3cret").unwrap();
        std::fs::write(gen.join("sub/x"), "y").unwrap();
        std::os::unix::fs::symlink("..2026_11_23", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        std::os::unix::fs::symlink("..data/sub", dir.join("sub")).unwrap();
        let v = HostVolume {
            name: "s".into(),
            dir: dir.clone(),
            medium: VolumeMedium::Memory,
        };
        let files = v.read().unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["sub/x", "token"]);
        assert_eq!(files[1].data, b"s3cret");
        let fp = fingerprint(&files);
        std::fs::write(gen.join("token"), "changed").unwrap();
        assert_ne!(fingerprint(&v.read().unwrap()), fp);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A fresh dir for one test; removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("vpod-vol-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("vol")).unwrap();
            TempDir(d)
        }
        fn vol(&self) -> HostVolume {
            HostVolume {
                name: "v".into(),
                dir: self.0.join("vol"),
                medium: VolumeMedium::Memory,
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(files: &[VolumeFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    /// Issue 12 item 7: loops end (once round each), no stack overflow, no ELOOP.
    #[test]
    fn symlink_loops_are_walked_once() {
        let t = TempDir::new("loop");
        let v = t.0.join("vol");
        std::fs::write(v.join("token"), "t").unwrap();
        std::os::unix::fs::symlink(".", v.join("loop")).unwrap();
        std::os::unix::fs::symlink("self", v.join("self")).unwrap();
        std::fs::create_dir(v.join("sub")).unwrap();
        std::os::unix::fs::symlink("..", v.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("../sub", v.join("sub/again")).unwrap();
        let files = t.vol().read().unwrap();
        assert_eq!(names(&files), ["token"]);
    }

    /// Issue 12 item 7: nothing outside the volume dir is read through a symlink.
    #[test]
    fn symlinks_leaving_the_volume_are_not_followed() {
        let t = TempDir::new("escape");
        let v = t.0.join("vol");
        std::fs::write(v.join("token"), "t").unwrap();
        std::fs::write(t.0.join("outside"), "host secret").unwrap();
        std::os::unix::fs::symlink("/etc", v.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", v.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../outside", v.join("up")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/hostname", v.join("magic")).unwrap();
        std::fs::create_dir(v.join("sub")).unwrap();
        std::os::unix::fs::symlink("../../outside", v.join("sub/up2")).unwrap();
        // Not a regular file: skipped, and reading never blocks on it.
        nix::unistd::mkfifo(&v.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let files = t.vol().read().unwrap();
        assert_eq!(names(&files), ["token"]);
    }

    /// Issue 12 item 7: the walk is bounded in depth and in entries.
    #[test]
    fn deep_or_huge_trees_are_refused() {
        let t = TempDir::new("deep");
        let mut d = t.0.join("vol");
        for _ in 0..MAX_VOLUME_DEPTH + 1 {
            d = d.join("d");
        }
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
        assert!(matches!(
            t.vol().read(),
            Err(HostVolumeError::TooDeep { .. })
        ));
        let t = TempDir::new("many");
        for i in 0..=MAX_VOLUME_ENTRIES {
            std::fs::File::create(t.0.join("vol").join(i.to_string())).unwrap();
        }
        assert!(matches!(
            t.vol().read(),
            Err(HostVolumeError::TooMany { .. })
        ));
    }

    #[test]
    fn a_volume_over_the_cap_is_refused() {
        let t = TempDir::new("big");
        let f = std::fs::File::create(t.0.join("vol/big")).unwrap();
        f.set_len(MAX_VOLUME_BYTES + 1).unwrap();
        assert!(matches!(
            t.vol().read(),
            Err(HostVolumeError::TooBig { .. })
        ));
        assert_eq!(read_capped(&b"abcd"[..], 4).unwrap().unwrap(), b"abcd");
        assert_eq!(read_capped(&b"abcde"[..], 4).unwrap(), None);
    }

    /// Issue 12 item 7: the cap counts bytes read, not what stat said before the read (a file
    /// that grows in between). procfs files stat as 0 bytes and hold more: bind-mounted into a
    /// volume (needs root, as CI runs) they are such a file.
    #[test]
    fn the_cap_counts_what_is_read_not_what_stat_said() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to bind-mount");
            return;
        }
        let src = Path::new("/proc/kallsyms");
        let len = std::fs::read(src).map(|d| d.len() as u64).unwrap_or(0);
        assert_eq!(std::fs::metadata(src).unwrap().len(), 0);
        if len == 0 {
            eprintln!("skipped: /proc/kallsyms is empty here");
            return;
        }
        let t = TempDir::new("grow");
        struct Unmount(Vec<PathBuf>);
        impl Drop for Unmount {
            fn drop(&mut self) {
                for p in &self.0 {
                    let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let mut mounted = Unmount(Vec::new());
        for i in 0..MAX_VOLUME_BYTES / len + 1 {
            let f = t.0.join("vol").join(format!("f{i}"));
            std::fs::write(&f, "").unwrap();
            let bind = nix::mount::MsFlags::MS_BIND;
            if let Err(e) = nix::mount::mount(Some(src), &f, None::<&str>, bind, None::<&str>) {
                eprintln!("skipped: bind-mount {}: {e}", f.display());
                return;
            }
            mounted.0.push(f);
        }
        let r = t.vol().read();
        drop(mounted);
        assert!(matches!(r, Err(HostVolumeError::TooBig { .. })), "{r:?}");
    }
}
