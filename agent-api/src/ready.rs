//! The guest's "agent ready" call to the host: a guest-initiated vsock connection.
//!
//! Right after the agent's listener is bound, vpod-init connects to the host (CID 2) on
//! [`AGENT_READY_PORT`] and writes `READY <agent_listening_boottime_ns>\n`; the host answers
//! `ACK <same number>\n`. The host learns the agent is up the moment it is, without polling, and
//! the guest learns the host side of vsock works. With vpod-vmm the host end is the unix socket
//! `<vsock uds>_1025` (the VMM joins guest connections to `<uds>_<port>`); with vhost-vsock it is
//! an AF_VSOCK listener. Nobody listening is fine: the guest just logs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Host vsock port the guest announces readiness to.
pub const AGENT_READY_PORT: u32 = 1025;

/// Longest READY/ACK line we read.
const MAX_LINE: usize = 64;

/// Failures of the readiness exchange.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The host's `<vsock uds>_1025` socket could not be bound.
    #[error("ready socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guest did not call within the time given.
    #[error("no readiness call from the guest within {0:?}")]
    Timeout(Duration),
    /// Reading or writing a line failed (or the peer closed).
    #[error("readiness exchange: {0}")]
    Io(#[from] std::io::Error),
    /// A line that is not `<word> <number>` (the line, the word expected).
    #[error("bad readiness line {0:?} (expected `{1} <number>`)")]
    BadLine(String, &'static str),
}

/// Reads one `\n`-terminated line (without it), at most [`MAX_LINE`] bytes.
async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, ReadyError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
        if line.len() > MAX_LINE {
            return Err(ReadyError::BadLine(
                String::from_utf8_lossy(&line).into_owned(),
                "line",
            ));
        }
    }
}

fn parse(line: &str, word: &'static str) -> Result<u64, ReadyError> {
    line.strip_prefix(word)
        .and_then(|r| r.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| ReadyError::BadLine(line.to_owned(), word))
}

/// Host side of one exchange: reads `READY <n>`, answers `ACK <n>`, returns n (the guest's
/// CLOCK_BOOTTIME when its agent started listening).
pub async fn answer_ready<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<u64, ReadyError> {
    let n = parse(&read_line(s).await?, "READY")?;
    s.write_all(format!("ACK {n}\n").as_bytes()).await?;
    s.flush().await?;
    Ok(n)
}

/// Guest side of one exchange: writes `READY <n>`, waits for `ACK <n>`.
pub async fn announce_ready<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    n: u64,
) -> Result<(), ReadyError> {
    s.write_all(format!("READY {n}\n").as_bytes()).await?;
    s.flush().await?;
    let line = read_line(s).await?;
    if parse(&line, "ACK")? != n {
        return Err(ReadyError::BadLine(line, "ACK"));
    }
    Ok(())
}

/// The host end for vpod-vmm: the unix socket `<vsock uds>_1025`. Bind it before the VM starts.
#[derive(Debug)]
pub struct ReadyListener {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Binds `<vsock_uds>_1025` (a stale socket file there is replaced).
    pub fn bind(vsock_uds: &Path) -> Result<Self, ReadyError> {
        let mut p = vsock_uds.as_os_str().to_owned();
        p.push(format!("_{AGENT_READY_PORT}"));
        let path = PathBuf::from(p);
        let bind_err = |source| ReadyError::Bind {
            path: path.clone(),
            source,
        };
        if std::fs::symlink_metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(&path);
        }
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(ReadyListener { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the guest's READY call, answers it, returns the guest's agent-listening BOOTTIME.
    /// Needs a tokio runtime with IO enabled.
    pub async fn wait(&self, timeout: Duration) -> Result<u64, ReadyError> {
        let std_listener = self.listener.try_clone()?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let exchange = async {
            let (mut s, _) = listener.accept().await?;
            answer_ready(&mut s).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ReadyError::Timeout(timeout))?
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exchange_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("vpod-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let l = ReadyListener::bind(&uds).unwrap();
        assert!(l.path().ends_with("v.sock_1025"));
        let path = l.path().to_owned();
        let guest = tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
            announce_ready(&mut s, 12345).await
        });
        assert_eq!(l.wait(Duration::from_secs(5)).await.unwrap(), 12345);
        guest.await.unwrap().unwrap();
        drop(l);
        assert!(!uds.with_file_name("v.sock_1025").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bad_lines_and_silence_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(b"HELLO 1\n").await.unwrap();
        assert!(matches!(
            answer_ready(&mut a).await,
            Err(ReadyError::BadLine(..))
        ));
        let (mut a, mut b) = tokio::io::duplex(256);
        b.write_all(&[b'x'; 100]).await.unwrap();
        assert!(matches!(
            answer_ready(&mut a).await,
            Err(ReadyError::BadLine(..))
        ));
        let dir = std::env::temp_dir().join(format!("vpod-ready-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = ReadyListener::bind(&dir.join("v.sock")).unwrap();
        assert!(matches!(
            l.wait(Duration::from_millis(50)).await,
            Err(ReadyError::Timeout(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
