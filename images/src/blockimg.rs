//! One read-only block image per image manifest: layers unpacked into a work tree, then
//! `mkfs.erofs` (or `mkfs.ext4 -d` where erofs-utils is missing). Cached by manifest digest,
//! with the image's run configuration beside it; concurrent builders of one image build it once.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{ConfigFile, RuntimeConfig};
use crate::store::{Store, TempFile};
use crate::unpack::unpack_image;

/// Filesystem of a block image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// erofs, built by `mkfs.erofs` (the default: compact and read-only by design).
    #[default]
    Erofs,
    /// ext4, built by `mkfs.ext4 -d` where erofs-utils is missing.
    Ext4,
}

impl FsType {
    /// The image file's extension (`erofs`, `ext4`).
    pub fn ext(self) -> &'static str {
        match self {
            FsType::Erofs => "erofs",
            FsType::Ext4 => "ext4",
        }
    }

    /// erofs when `mkfs.erofs` is installed, else ext4.
    pub fn detect() -> FsType {
        if which("mkfs.erofs").is_some() {
            FsType::Erofs
        } else {
            FsType::Ext4
        }
    }
}

/// The image configuration kept beside its block image (`disks/<hex>.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    /// The (platform) manifest the image was built from.
    pub manifest: Digest,
    /// Its configuration blob.
    pub config_digest: Digest,
    /// Its layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// Sum of the layer blob sizes (compressed, as stored).
    pub layers_size: u64,
    /// Filesystem of the block image.
    pub fs_type: FsType,
    /// Size of the block image file in bytes.
    pub disk_size: u64,
    /// CPU architecture from the image configuration.
    pub architecture: String,
    /// Operating system from the image configuration.
    pub os: String,
    /// How to run the image.
    pub config: RuntimeConfig,
}

/// Time spent building a block image (zero on a cache hit).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct BuildStats {
    /// Unpacking the layers (with their verification).
    pub unpack_ms: f64,
    /// Making the filesystem.
    pub mkfs_ms: f64,
    /// The whole build, fsync and rename included.
    pub total_ms: f64,
}

/// A ready block image.
#[derive(Clone, Debug)]
pub struct BlockImage {
    /// The image file (`disks/<hex>.erofs`).
    pub path: PathBuf,
    /// What it was built from.
    pub info: ImageInfo,
    /// False when it came from the cache.
    pub built: bool,
    /// Time the build took.
    pub stats: BuildStats,
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a tool, turning a failure into an error that carries its stderr.
fn run(cmd: &mut Command, tool: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: tool.to_owned(),
        reason: format!("cannot run it: {e}"),
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: tool.to_owned(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Builds a filesystem image of `tree` at `out` (which must not exist or be empty).
pub fn make_fs(fs_type: FsType, tree: &Path, out: &Path) -> Result<()> {
    match fs_type {
        FsType::Erofs => {
            let tool = which("mkfs.erofs").ok_or_else(|| Error::Tool {
                tool: "mkfs.erofs".into(),
                reason: "not installed (Debian package erofs-utils)".into(),
            })?;
            run(
                Command::new(tool).arg("--quiet").arg(out).arg(tree),
                "mkfs.erofs",
            )
        }
        FsType::Ext4 => {
            let tool = which("mkfs.ext4").ok_or_else(|| Error::Tool {
                tool: "mkfs.ext4".into(),
                reason: "not installed (Debian package e2fsprogs)".into(),
            })?;
            // ext4 needs its size up front: the tree plus room for metadata.
            let (bytes, inodes) = tree_size(tree);
            let size = (bytes + bytes / 4 + (32 << 20)).div_ceil(4096) * 4096;
            fs::File::create(out)
                .and_then(|f| f.set_len(size))
                .ctx("create", out)?;
            run(
                Command::new(tool)
                    .args(["-q", "-F", "-b", "4096", "-O", "^has_journal", "-m", "0"])
                    .arg("-N")
                    .arg((inodes + inodes / 4 + 1024).to_string())
                    .arg("-d")
                    .arg(tree)
                    .arg(out),
                "mkfs.ext4",
            )
        }
    }
}

fn tree_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return (0, 0);
    };
    // Round each file up to a block: that's what it will take on ext4.
    let mut bytes = m.size().div_ceil(4096) * 4096;
    let mut inodes = 1;
    if m.is_dir() {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            let (b, i) = tree_size(&e.path());
            bytes += b;
            inodes += i;
        }
    }
    (bytes, inodes)
}

/// Removes a work tree on drop (error paths included).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Store {
    fn disk_paths(&self, manifest: &Digest) -> [(FsType, PathBuf); 2] {
        let d = self.disks_dir();
        [
            (FsType::Erofs, d.join(format!("{}.erofs", manifest.hex()))),
            (FsType::Ext4, d.join(format!("{}.ext4", manifest.hex()))),
        ]
    }

    fn info_path(&self, manifest: &Digest) -> PathBuf {
        self.disks_dir().join(format!("{}.json", manifest.hex()))
    }

    /// The cached block image of `manifest`, if one was built.
    pub fn cached_block_image(&self, manifest: &Digest) -> Result<Option<BlockImage>> {
        for (_, path) in self.disk_paths(manifest) {
            if path.is_file() {
                let ip = self.info_path(manifest);
                let data = fs::read(&ip).ctx("read", &ip)?;
                let info = serde_json::from_slice(&data).map_err(|e| Error::Json {
                    what: ip.display().to_string(),
                    source: e,
                })?;
                return Ok(Some(BlockImage {
                    path,
                    info,
                    built: false,
                    stats: BuildStats::default(),
                }));
            }
        }
        Ok(None)
    }

    /// The parsed configuration blob of an image (manifest or index digest).
    pub fn image_config(
        &self,
        digest: &Digest,
    ) -> Result<(Digest, crate::oci::Manifest, ConfigFile)> {
        let (md, manifest) = self.manifest(digest)?;
        let bytes = self.read_blob(&manifest.config.digest)?;
        let config = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            what: format!("image config {}", manifest.config.digest),
            source: e,
        })?;
        Ok((md, manifest, config))
    }

    /// The block image of a stored image (by name or digest), built if not cached.
    pub fn block_image(&self, name: &str) -> Result<BlockImage> {
        let d = self.resolve(name)?;
        self.ensure_block_image(&d, FsType::detect())
    }

    /// Builds (once) the block image of the image whose manifest (or index) is `digest`.
    pub fn ensure_block_image(&self, digest: &Digest, fs_type: FsType) -> Result<BlockImage> {
        let (manifest_digest, manifest) = self.manifest(digest)?;
        if let Some(b) = self.cached_block_image(&manifest_digest)? {
            return Ok(b);
        }
        let _writers = self.writer_guard()?;
        // One builder per image; the others wait here and then find it cached.
        let _build = self.exclusive_lock(&format!("disks/{}.lock", manifest_digest.hex()))?;
        if let Some(b) = self.cached_block_image(&manifest_digest)? {
            return Ok(b);
        }
        let t0 = Instant::now();
        let (_, _, config) = self.image_config(&manifest_digest)?;
        let layers: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        // The tree holds the image's set-id files and device nodes: it lives in a 0700 dir of
        // its own (under 0700 work/ and images/), so no other user reaches it, even one that
        // kept a cwd or an fd open in work/ from before. Its root is the image's `/` (0755).
        let work = WorkDir(self.work_dir().join(format!(
            "{}-{}",
            manifest_digest.short(),
            std::process::id()
        )));
        let _ = fs::remove_dir_all(&work.0);
        crate::store::private_dir(&self.work_dir())?;
        fs::DirBuilder::new()
            .mode(crate::store::DIR_MODE)
            .create(&work.0)
            .ctx("create directory", &work.0)?;
        fs::set_permissions(&work.0, fs::Permissions::from_mode(crate::store::DIR_MODE))
            .ctx("chmod", &work.0)?;
        let tree = work.0.join("rootfs");
        fs::create_dir(&tree).ctx("create directory", &tree)?;
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).ctx("chmod", &tree)?;
        unpack_image(self, &layers, &tree)?;
        let unpacked = t0.elapsed();

        let (temp, f) = TempFile::new(&self.ingest_dir(), "disk")?;
        drop(f);
        make_fs(fs_type, &tree, &temp.path)?;
        // Whatever mode mkfs gave its output, the store's files are 0600.
        fs::set_permissions(
            &temp.path,
            fs::Permissions::from_mode(crate::store::FILE_MODE),
        )
        .ctx("chmod", &temp.path)?;
        let file = fs::File::open(&temp.path).ctx("open", &temp.path)?;
        file.sync_all().ctx("fsync", &temp.path)?;
        let disk_size = file.metadata().ctx("stat", &temp.path)?.len();
        drop(work);

        let info = ImageInfo {
            manifest: manifest_digest.clone(),
            config_digest: manifest.config.digest.clone(),
            layers,
            layers_size: manifest.layers.iter().map(|l| l.size).sum(),
            fs_type,
            disk_size,
            architecture: config.architecture,
            os: config.os,
            config: config.config.unwrap_or_default(),
        };
        // The info first: a block image on disk always has its info beside it.
        let (itemp, mut ifile) = TempFile::new(&self.ingest_dir(), "info")?;
        ifile
            .write_all(&serde_json::to_vec_pretty(&info).expect("info serializes"))
            .and_then(|_| ifile.sync_all())
            .ctx("write", &itemp.path)?;
        itemp.persist(&self.info_path(&manifest_digest))?;
        let dest = self
            .disk_paths(&manifest_digest)
            .into_iter()
            .find(|(t, _)| *t == fs_type)
            .expect("both types listed")
            .1;
        temp.persist(&dest)?;
        let total = t0.elapsed();
        Ok(BlockImage {
            path: dest,
            info,
            built: true,
            stats: BuildStats {
                unpack_ms: unpacked.as_secs_f64() * 1e3,
                mkfs_ms: (total - unpacked).as_secs_f64() * 1e3,
                total_ms: total.as_secs_f64() * 1e3,
            },
        })
    }
}
