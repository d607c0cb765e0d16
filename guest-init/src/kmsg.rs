//! Reading the guest kernel log from `/dev/kmsg`.
//!
//! Each `read()` of /dev/kmsg returns one record:
//! `<prio>,<seq>,<usec>,<flags>[,...];<message>\n`, possibly followed by
//! dictionary lines that start with a space. Reads never block here (the fd
//! is non-blocking): EAGAIN means "no more records for now", EPIPE means the
//! ring overwrote records we had not read yet (the seq gap shows it).
//! Parsing works line by line, so a regular file with the same text (tests)
//! reads the same way.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vpod_agent_api::pb::{LogEntry, LogSource};

/// Large enough for any record: the kernel caps one at ~1 KiB of text plus
/// its dictionary, and EINVAL comes back if the buffer is too small.
const READ_BUF: usize = 8192;

/// Parses one record line (without its newline). Dictionary lines and
/// malformed lines give `None`.
pub fn parse_record(line: &str) -> Option<LogEntry> {
    if line.starts_with(' ') {
        return None;
    }
    let (header, message) = line.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    Some(LogEntry {
        source: LogSource::Kernel as i32,
        level: prio & 7,
        seq,
        boottime_ns: usec.saturating_mul(1000),
        message: message.to_owned(),
    })
}

/// Appends every record found in `chunk` to `out`.
fn parse_chunk(chunk: &[u8], out: &mut Vec<LogEntry>) {
    let text = String::from_utf8_lossy(chunk);
    out.extend(text.lines().filter_map(parse_record));
}

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some records (possibly none if the chunk held only dictionary lines).
    Records,
    /// No record available now (EAGAIN on /dev/kmsg).
    WouldBlock,
    /// End of file (a regular file, never /dev/kmsg).
    Eof,
}

/// A non-blocking reader positioned at the oldest record still in the ring.
#[derive(Debug)]
pub struct KmsgReader {
    file: File,
    buf: Vec<u8>,
}

impl KmsgReader {
    /// Opens `path` (normally /dev/kmsg) non-blocking.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(KmsgReader {
            file,
            buf: vec![0; READ_BUF],
        })
    }

    /// The open file, to poll for readability.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// One read; records found are appended to `out`.
    pub fn read_once(&mut self, out: &mut Vec<LogEntry>) -> io::Result<ReadOutcome> {
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => {
                    parse_chunk(&self.buf[..n], out);
                    return Ok(ReadOutcome::Records);
                }
                // Records were overwritten before we read them: the next
                // read resumes at the oldest one left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything available now.
    pub fn read_available(&mut self) -> io::Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        while self.read_once(&mut out)? == ReadOutcome::Records {}
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let e = parse_record("6,339,5140900,-;NET: Registered PF_VSOCK protocol family").unwrap();
        assert_eq!(e.level, 6);
        assert_eq!(e.seq, 339);
        assert_eq!(e.boottime_ns, 5_140_900_000);
        assert_eq!(e.message, "NET: Registered PF_VSOCK protocol family");
        assert_eq!(e.source, LogSource::Kernel as i32);

        // Facility bits are dropped, extra header fields ignored, ';' in text kept.
        let e = parse_record("30,7,12,c,caller=T1;a;b").unwrap();
        assert_eq!((e.level, e.seq, e.message.as_str()), (6, 7, "a;b"));

        assert_eq!(parse_record(" SUBSYSTEM=virtio"), None);
        assert_eq!(parse_record("garbage"), None);
        assert_eq!(parse_record("x,1,2,-;msg"), None);
        assert_eq!(parse_record("6,1;msg"), None);
        assert_eq!(parse_record(""), None);
    }

    #[test]
    fn reads_regular_file_until_eof() {
        let path = std::env::temp_dir().join(format!("vpod-kmsg-test-{}", std::process::id()));
        std::fs::write(
            &path,
            "5,0,0,-;Linux version 6.1\n SUBSYSTEM=x\n4,1,1500,-;warn line\nbad\n",
        )
        .unwrap();
        let mut r = KmsgReader::open(&path).unwrap();
        let lines = r.read_available().unwrap();
        std::fs::remove_file(&path).unwrap();
        let got: Vec<_> = lines
            .iter()
            .map(|e| (e.seq, e.level, e.boottime_ns, e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 5, 0, "Linux version 6.1"),
                (1, 4, 1_500_000, "warn line")
            ]
        );
    }

    #[test]
    fn open_missing_is_an_error() {
        assert!(KmsgReader::open(Path::new("/nonexistent/kmsg")).is_err());
    }
}
