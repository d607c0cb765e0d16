//! Host-side client: reach the guest agent through the VMM's vsock unix socket.
//!
//! The VMM exposes the guest's virtio-vsock device as one unix socket on the
//! host. A host process opens a connection to a guest port by connecting to
//! that socket and sending `CONNECT <port>\n`; the VMM answers
//! `OK <hostport>\n` once the guest accepted, and from then on the unix
//! stream carries the vsock stream's bytes. If the guest refuses (nothing
//! listens on the port yet), the VMM closes the unix stream.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::agent_client::AgentClient;
use crate::pb::PingRequest;

/// How long [`connect`] waits for the VMM's `OK` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply line accepted from the VMM (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LINE: usize = 64;

/// Pause between attempts in [`connect_with_retry`]: starts small because the
/// agent usually comes up within milliseconds, grows to bound the load.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(2);
const RETRY_DELAY_MAX: Duration = Duration::from_millis(50);

/// Errors of the host-side agent client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to the VMM vsock socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("vsock handshake for guest port {port}: {source}")]
    HandshakeIo { port: u32, source: io::Error },
    #[error("vsock handshake for guest port {port}: VMM closed the connection (guest refused or not listening){}",
        if partial.is_empty() { String::new() } else { format!(" after {partial:?}") })]
    HandshakeClosed { port: u32, partial: String },
    #[error(
        "vsock handshake for guest port {port}: VMM replied {line:?} instead of \"OK <hostport>\""
    )]
    HandshakeRejected { port: u32, line: String },
    #[error("vsock handshake for guest port {port}: no reply within {timeout:?}")]
    HandshakeTimeout { port: u32, timeout: Duration },
    #[error("gRPC connection to guest port {port}: {source}")]
    Transport {
        port: u32,
        source: tonic::transport::Error,
    },
    #[error("agent on guest port {port} did not answer Ping: {status}")]
    Ping { port: u32, status: tonic::Status },
    #[error("agent on guest port {port} not ready after {waited:?} ({attempts} attempts); last error: {last}")]
    NotReady {
        port: u32,
        waited: Duration,
        attempts: u32,
        last: Box<Error>,
    },
}

/// Runs the VMM's vsock host handshake on an already connected unix stream:
/// writes `CONNECT <port>\n`, reads `OK <hostport>\n` and returns `hostport`.
///
/// Reads the reply one byte at a time so that no byte the guest sends right
/// after the handshake (an HTTP/2 server speaks first) is swallowed.
pub async fn vsock_handshake(stream: &mut UnixStream, port: u32) -> Result<u32, Error> {
    let io_err = |source| Error::HandshakeIo { port, source };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err)?;

    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(io_err)?;
        if n == 0 {
            return Err(Error::HandshakeClosed {
                port,
                partial: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LINE {
            return Err(Error::HandshakeRejected {
                port,
                line: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }

    let text = String::from_utf8_lossy(&line).into_owned();
    parse_ok_line(&text).ok_or(Error::HandshakeRejected { port, line: text })
}

/// `OK <hostport>` (no trailing newline) -> `hostport`.
fn parse_ok_line(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("OK ")?;
    rest.trim_end_matches('\r').parse().ok()
}

/// Connects to the VMM's vsock unix socket and completes the handshake.
async fn open_stream(uds_path: &Path, port: u32) -> Result<UnixStream, Error> {
    let mut stream = UnixStream::connect(uds_path)
        .await
        .map_err(|source| Error::Connect {
            path: uds_path.to_path_buf(),
            source,
        })?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, vsock_handshake(&mut stream, port)).await {
        Ok(Ok(_hostport)) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::HandshakeTimeout {
            port,
            timeout: HANDSHAKE_TIMEOUT,
        }),
    }
}

/// Connects to the agent listening on guest vsock `port` through the VMM's
/// vsock unix socket at `uds_path`.
///
/// The returned client reconnects by itself (new handshake) if the
/// connection drops; errors of the first connection are reported precisely
/// (refused, bad reply, timeout) instead of as an opaque transport error.
pub async fn connect(uds_path: &Path, port: u32) -> Result<AgentClient<Channel>, Error> {
    // First connection: done here so its errors keep their type.
    let first = open_stream(uds_path, port).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let uds_path = uds_path.to_path_buf();

    let connector = tower::service_fn(move |_: Uri| {
        let first = first.clone();
        let uds_path = uds_path.clone();
        async move {
            // A poisoned lock only means another connector call panicked; the
            // Option inside is still meaningful.
            let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            let stream = match ready {
                Some(stream) => stream,
                None => open_stream(&uds_path, port).await?,
            };
            Ok::<_, Error>(TokioIo::new(stream))
        }
    });

    // The URI is only used for the HTTP/2 :authority; the connector ignores it.
    let channel = Endpoint::from_static("http://vpod-agent")
        .connect_with_connector(connector)
        .await
        .map_err(|source| Error::Transport { port, source })?;
    Ok(AgentClient::new(channel))
}

/// Like [`connect`], but keeps trying until the agent answers a `Ping` or
/// `timeout` has passed: "wait until the guest agent is ready".
///
/// Every failure is retried (the VMM socket may not exist yet, the guest may
/// not listen yet); on timeout the last failure is returned inside
/// [`Error::NotReady`].
pub async fn connect_with_retry(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<AgentClient<Channel>, Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = RETRY_DELAY_MIN;
    let mut attempts = 0u32;

    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            let mut client = connect(uds_path, port).await?;
            client
                .ping(PingRequest { token: 0 })
                .await
                .map_err(|status| Error::Ping { port, status })?;
            Ok::<_, Error>(client)
        };
        let last = match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => e,
            Err(_) => Error::HandshakeTimeout {
                port,
                timeout: remaining,
            },
        };

        let now = Instant::now();
        if now + delay >= deadline {
            return Err(Error::NotReady {
                port,
                waited: now - start,
                attempts,
                last: Box::new(last),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn parses_ok_line() {
        assert_eq!(parse_ok_line("OK 1073741824"), Some(1_073_741_824));
        assert_eq!(parse_ok_line("OK 5\r"), Some(5));
        assert_eq!(parse_ok_line("OK"), None);
        assert_eq!(parse_ok_line("OK -1"), None);
        assert_eq!(parse_ok_line("OK 99999999999"), None);
        assert_eq!(parse_ok_line("ERR no such port"), None);
        assert_eq!(parse_ok_line(""), None);
    }

    /// A fake VMM that reads the CONNECT line, then answers `reply` verbatim
    /// and keeps the connection open for a moment.
    async fn fake_vmm(reply: &'static [u8]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            while !got.ends_with(b"\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"CONNECT 1024\n");
            s.write_all(reply).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn handshake_ok_keeps_following_bytes() {
        let (_dir, path) = fake_vmm(b"OK 77\nPAYLOAD").await;
        let mut s = UnixStream::connect(&path).await.unwrap();
        assert_eq!(vsock_handshake(&mut s, 1024).await.unwrap(), 77);
        let mut rest = [0u8; 7];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"PAYLOAD");
    }

    #[tokio::test]
    async fn handshake_rejects_other_reply() {
        let (_dir, path) = fake_vmm(b"NO such port\n").await;
        let err = connect(&path, 1024).await.unwrap_err();
        match err {
            Error::HandshakeRejected {
                port: 1024,
                ref line,
            } => assert_eq!(line, "NO such port"),
            other => panic!("unexpected error: {other}"),
        }
    }

    #[tokio::test]
    async fn handshake_rejects_endless_line() {
        let (_dir, path) = fake_vmm(&[b'A'; 200]).await;
        let err = connect(&path, 1024).await.unwrap_err();
        assert!(matches!(err, Error::HandshakeRejected { .. }), "{err}");
    }

    #[tokio::test]
    async fn handshake_reports_close() {
        let (_dir, path) = fake_vmm(b"OK").await;
        // The fake closes after its pause: the partial line is reported.
        let err = connect(&path, 1024).await.unwrap_err();
        match err {
            Error::HandshakeClosed { ref partial, .. } => assert_eq!(partial, "OK"),
            other => panic!("unexpected error: {other}"),
        }
    }

    #[tokio::test]
    async fn connect_reports_missing_socket() {
        let dir = tempdir::Dir::new();
        let err = connect(&dir.path().join("absent.sock"), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }

    #[tokio::test]
    async fn retry_gives_up_at_deadline() {
        let dir = tempdir::Dir::new();
        let start = Instant::now();
        let err = connect_with_retry(
            &dir.path().join("absent.sock"),
            1024,
            Duration::from_millis(150),
        )
        .await
        .unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "overran deadline: {took:?}");
        match err {
            Error::NotReady { attempts, last, .. } => {
                assert!(attempts > 1);
                assert!(matches!(*last, Error::Connect { .. }), "{last}");
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    /// Minimal self-cleaning temporary directory (no extra dependency).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "vpod-agent-api-test-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
