//! A container's output file on the host, bounded: a guest decides how much it prints, so the
//! file it fills must not grow without limit. Two generations, as kubelet rotates CRI logs:
//! when `container.log` would pass its limit it becomes `container.log.1` (replacing the older
//! one) and a fresh `container.log` starts. At most twice the limit is ever on disk; what was
//! rotated away is counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Default limit of one generation: kubelet's `containerLogMaxSize` default (10 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    file: File,
    max: u64,
    /// Bytes in the current generation.
    len: u64,
    /// Bytes that left the host for good (the generations rotated away).
    dropped: u64,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl CappedLog {
    /// Opens (or continues) the log at `path`, mode 0600, each generation at most `max` bytes.
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            max: max.max(1),
            len,
            dropped: 0,
        })
    }

    /// The previous generation's path.
    pub fn rotated(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Bytes rotated away so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let old = Self::rotated(&self.path);
        self.dropped += std::fs::metadata(&old).map_or(0, |m| m.len());
        std::fs::rename(&self.path, &old)?;
        self.file = open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.len >= self.max {
                self.rotate()?;
            }
            let room = usize::try_from(self.max - self.len).unwrap_or(usize::MAX);
            let (now, rest) = buf.split_at(room.min(buf.len()));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            buf = rest;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vpod-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_flood_stays_within_two_generations() {
        let dir = tempdir("flood");
        let path = dir.join("container.log");
        let mut log = CappedLog::open(&path, 1000).unwrap();
        for i in 0..1000u32 {
            writeln!(log, "line {i:06} of a guest that prints without end").unwrap();
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(CappedLog::rotated(&path)).unwrap().len();
        assert!(cur <= 1000 && old <= 1000, "current {cur}, rotated {old}");
        assert!(log.dropped() > 40_000, "dropped {}", log.dropped());
        // The newest output is kept.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("line 000999 of a guest that prints without end\n"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopening_continues_the_count() {
        let dir = tempdir("reopen");
        let path = dir.join("container.log");
        CappedLog::open(&path, 100)
            .unwrap()
            .write_all(&[b'a'; 90])
            .unwrap();
        let mut log = CappedLog::open(&path, 100).unwrap();
        log.write_all(&[b'b'; 20]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
        assert_eq!(
            std::fs::metadata(CappedLog::rotated(&path)).unwrap().len(),
            100
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
