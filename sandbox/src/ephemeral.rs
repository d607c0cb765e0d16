//! The pod's ephemeral disk: one sparse file, formatted ext4 on the host
//! before any pod data exists, so the host never reads what the guest
//! writes. Its size is the pod's ephemeral-storage limit; a full disk is
//! ENOSPC for the writer in the guest, never a host problem (the file
//! cannot grow past its size).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Default size when the pod sets no ephemeral-storage limit.
pub const DEFAULT_EPHEMERAL_BYTES: u64 = 4 << 30;
/// Below this mkfs.ext4 cannot make a useful filesystem.
pub const MIN_EPHEMERAL_BYTES: u64 = 8 << 20;

/// Why the ephemeral disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    /// The size asked for is below [`MIN_EPHEMERAL_BYTES`].
    #[error(
        "size {0} bytes is below the {MIN_EPHEMERAL_BYTES}-byte minimum (ephemeral-storage limit)"
    )]
    TooSmall(u64),
    /// The disk file could not be made (or exists already).
    #[error("create {path}: {source}")]
    Create {
        /// The disk file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.ext4 could not be run.
    #[error("run mkfs.ext4 (install e2fsprogs): {0}")]
    Mkfs(std::io::Error),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 {path} failed: {stderr}")]
    MkfsFailed {
        /// The disk file.
        path: String,
        /// What mkfs said.
        stderr: String,
    },
}

/// Creates the sparse file `path` of `bytes` and makes an ext4 on it.
pub fn create(path: &Path, bytes: u64) -> Result<(), EphemeralError> {
    if bytes < MIN_EPHEMERAL_BYTES {
        return Err(EphemeralError::TooSmall(bytes));
    }
    let create_err = |source| EphemeralError::Create {
        path: path.display().to_string(),
        source,
    };
    // What the guest writes is the pod's alone: 0600 whatever the umask.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create_err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(create_err)?;
    f.set_len(bytes).map_err(create_err)?;
    drop(f);
    // No reserved blocks (one writer, the pod); lazy init keeps mkfs from
    // writing the whole inode table, so the file stays sparse and it is fast.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "vpod-ephemeral",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(path)
        .output()
        .map_err(EphemeralError::Mkfs)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(EphemeralError::MkfsFailed {
            path: path.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn makes_a_sparse_ext4() {
        let dir = std::env::temp_dir().join(format!("vpod-eph-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("e.img");
        create(&p, 64 << 20).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 64 << 20);
        assert!(
            md.blocks() * 512 < 16 << 20,
            "not sparse: {} blocks",
            md.blocks()
        );
        assert_eq!(
            md.mode() & 0o777,
            0o600,
            "issue 12 item 8: only root reads it"
        );
        let magic = std::fs::read(&p).unwrap();
        // ext2/3/4 superblock magic at 1024 + 56.
        assert_eq!(&magic[1080..1082], &[0x53, 0xef]);
        assert!(matches!(
            create(&p, 64 << 20),
            Err(EphemeralError::Create { .. })
        ));
        assert!(matches!(
            create(&dir.join("s"), 1 << 20),
            Err(EphemeralError::TooSmall(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
