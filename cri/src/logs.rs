//! A container's log in kubelet's CRI format, one line per line of output:
//!
//! ```text
//! 2026-12-03T14:00:00.123456789Z stdout F hello
//! 2026-12-03T14:00:00.123456789Z stderr P the first 16 KiB of a longer line...
//! ```
//!
//! `F` ends a line, `P` is a piece of one that goes on (a line longer than [`MAX_LINE`]); the
//! last bytes of a stream that ends without a newline are an `F` line too. Each stream
//! keeps its own unfinished line, so stdout and stderr never mix inside one. The file is bounded:
//! past its limit output is counted and dropped until kubelet rotates it (ReopenContainerLog).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest piece in one log line (containerd's default, 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Its stdout.
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One container's log file.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: File,
    max: u64,
    len: u64,
    /// Bytes of output dropped since the file reached its limit.
    dropped: u64,
    /// Each stream's unfinished line: stdout's, stderr's.
    partial: [Vec<u8>; 2],
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl CriLog {
    /// Opens (appending to) `path`, which may hold at most `max` bytes.
    pub fn open(path: &Path, max: u64) -> std::io::Result<CriLog> {
        let file = open(path)?;
        let len = file.metadata()?.len();
        Ok(CriLog {
            path: path.into(),
            file,
            max,
            len,
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Bytes of output dropped because the file was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes `data` of `stream`: every finished line as `F`, pieces of [`MAX_LINE`] as `P`; an
    /// unfinished rest waits for the next call (or [`CriLog::finish`]).
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let i = stream as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_LINE - self.partial[i].len();
            match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(n) => {
                    self.partial[i].extend_from_slice(&rest[..n]);
                    rest = &rest[n + 1..];
                    self.emit(stream, 'F');
                }
                None if rest.len() >= room => {
                    self.partial[i].extend_from_slice(&rest[..room]);
                    rest = &rest[room..];
                    self.emit(stream, 'P');
                }
                None => {
                    self.partial[i].extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
    }

    /// The streams ended: what is left of a line is written as a finished one.
    pub fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.partial[stream as usize].is_empty() {
                self.emit(stream, 'F');
            }
        }
    }

    /// Opens the log's path again (kubelet renamed the file to rotate it); the new file starts
    /// empty of this writer's limit.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open(&self.path)?;
        self.len = self.file.metadata()?.len();
        Ok(())
    }

    fn emit(&mut self, stream: Stream, tag: char) {
        let text = std::mem::take(&mut self.partial[stream as usize]);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut line = format!("{now} {} {tag} ", stream.name()).into_bytes();
        line.extend_from_slice(&text);
        line.push(b'\n');
        if self.len + line.len() as u64 > self.max {
            self.dropped += text.len() as u64;
            return;
        }
        match self.file.write_all(&line) {
            Ok(()) => self.len += line.len() as u64,
            Err(e) => {
                self.dropped += text.len() as u64;
                tracing::warn!("log {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let ts = f.next().unwrap();
                assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                let (s, t, x) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
                (s.to_owned(), t.to_owned(), x.to_owned())
            })
            .collect()
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vpod-crilog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn lines_pieces_and_streams_keep_apart() {
        let p = tmp("lines");
        let mut log = CriLog::open(&p, 1 << 20).unwrap();
        log.write(Stream::Stdout, b"one\ntw");
        log.write(Stream::Stderr, b"err\n");
        log.write(Stream::Stdout, b"o\n");
        log.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 3]);
        log.write(Stream::Stdout, b"\nlast");
        log.finish();
        let got = lines(&p);
        let want = [
            ("stdout", "F", "one".to_owned()),
            ("stderr", "F", "err".to_owned()),
            ("stdout", "F", "two".to_owned()),
            ("stdout", "P", "x".repeat(MAX_LINE)),
            ("stdout", "F", "xxx".to_owned()),
            ("stdout", "F", "last".to_owned()),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(
                (g.0.as_str(), g.1.as_str(), g.2.as_str()),
                (w.0, w.1, w.2.as_str())
            );
        }
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_full_file_drops_output_until_it_is_rotated() {
        let p = tmp("full");
        let mut log = CriLog::open(&p, 200).unwrap();
        for _ in 0..20 {
            log.write(Stream::Stdout, b"0123456789\n");
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        assert!(log.dropped() > 0);
        let rotated = p.with_extension("1");
        std::fs::rename(&p, &rotated).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"after\n");
        assert_eq!(lines(&p)[0].2, "after");
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&rotated);
    }

    use std::os::unix::fs::PermissionsExt;
}
