//! L1's boot files (Debian's generic kernel + a small initramfs), built and cached by `l1/build.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

/// The cached boot files of L1.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// Debian's generic kernel.
    pub kernel: PathBuf,
    /// L1's initramfs (its init mounts the host's userland).
    pub initramfs: PathBuf,
}

/// The build script, found through `VPOD_TESTBED_L1` (a dir holding build.sh) or beside this crate.
fn build_script() -> PathBuf {
    match std::env::var_os("VPOD_TESTBED_L1") {
        Some(d) => Path::new(&d).join("build.sh"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("l1/build.sh"),
    }
}

/// Builds (or finds in the cache) L1's boot files. Cheap when cached.
pub fn ensure() -> Result<BootFiles, Error> {
    let script = build_script();
    if !script.exists() {
        return Err(Error::Setup(format!(
            "the L1 build script {} is missing",
            script.display()
        )));
    }
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Setup(format!("running {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let files = BootFiles {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    for f in [&files.kernel, &files.initramfs] {
        if !f.exists() {
            return Err(Error::Setup(format!(
                "{} did not produce {}",
                script.display(),
                f.display()
            )));
        }
    }
    Ok(files)
}
