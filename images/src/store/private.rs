//! Files no one but root may reach: the store's modes (set explicitly, whatever the umask) and
//! temp files that are renamed into place only when whole.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

/// Mode of every directory of the store.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the store writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `p` (its parent must exist) if missing, and gives it mode 0700 either way.
pub(crate) fn private_dir(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx("create directory", p),
    }
    let m = fs::symlink_metadata(p).ctx("stat", p)?;
    if !m.is_dir() {
        return Err(Error::Io {
            op: "create directory",
            path: p.to_owned(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        });
    }
    if m.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(p, fs::Permissions::from_mode(DIR_MODE)).ctx("chmod", p)?;
    }
    Ok(())
}

/// Opens `p` for writing, creating it 0600 (made so explicitly, whatever the umask).
pub(super) fn private_file(p: &Path, create_new: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(!create_new)
        .create_new(create_new)
        .truncate(false)
        .mode(FILE_MODE)
        .open(p)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file in `ingest/` that is deleted unless committed.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub(crate) fn new(dir: &Path, tag: &str) -> Result<(TempFile, File)> {
        let name = format!(
            "{tag}-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let f = private_file(&path, true).ctx("create", &path)?;
        Ok((TempFile { path, keep: false }, f))
    }

    /// Renames the temp file to `dest` (atomic: `dest` is either absent or whole).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).ctx("rename into place", dest)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}
