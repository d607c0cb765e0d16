//! Host-side client: reach the guest agent through the VMM's vsock unix socket.
//!
//! The VMM exposes the guest's virtio-vsock device as one unix socket on the
//! host. A host process opens a connection to a guest port by connecting to
//! that socket and sending `CONNECT <port>\n`; the VMM answers
//! `OK <hostport>\n` once the guest accepted, and from then on the unix
//! stream carries the vsock stream's bytes. If the guest refuses (nothing
//! listens on the port yet), the VMM closes the unix stream.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::agent_client::AgentClient;
use crate::pb::PingRequest;

/// How long [`connect`] waits for the VMM's `OK` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline of an agent call ([`call_timeout`]).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable that overrides [`DEFAULT_CALL_TIMEOUT`], in seconds
/// (`30`, `2.5`): read by [`connect`] and [`connect_with_retry`].
pub const CALL_TIMEOUT_ENV: &str = "VPOD_AGENT_CALL_TIMEOUT";

/// Calls that legitimately last as long as something in the guest: a
/// container's life (WaitContainer), its stop grace period (StopContainer),
/// its stdin (WriteStdin, a client stream answered at its end). They get no
/// deadline here; their callers bound them.
const UNBOUNDED_CALLS: &[&str] = &["WaitContainer", "StopContainer", "WriteStdin"];

/// Longest reply line accepted from the VMM (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LINE: usize = 64;

/// Pause between attempts in [`connect_with_retry`]: starts small because the
/// agent usually comes up within milliseconds, grows to bound the load.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(2);
const RETRY_DELAY_MAX: Duration = Duration::from_millis(50);

/// Errors of the host-side agent client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VMM's vsock unix socket could not be connected to.
    #[error("connect to the VMM vsock socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing `CONNECT <port>` or reading the reply failed.
    #[error("vsock handshake for guest port {port}: {source}")]
    HandshakeIo {
        /// The guest port.
        port: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The VMM closed the stream before a whole reply line.
    #[error("vsock handshake for guest port {port}: VMM closed the connection (guest refused or not listening){}",
        if partial.is_empty() { String::new() } else { format!(" after {partial:?}") })]
    HandshakeClosed {
        /// The guest port.
        port: u32,
        /// What arrived before the close.
        partial: String,
    },
    /// The VMM answered something other than `OK <hostport>`.
    #[error(
        "vsock handshake for guest port {port}: VMM replied {line:?} instead of \"OK <hostport>\""
    )]
    HandshakeRejected {
        /// The guest port.
        port: u32,
        /// The reply line.
        line: String,
    },
    /// No reply within the time allowed ([`HANDSHAKE_TIMEOUT`], or what is left of a retry's).
    #[error("vsock handshake for guest port {port}: no reply within {timeout:?}")]
    HandshakeTimeout {
        /// The guest port.
        port: u32,
        /// How long it waited.
        timeout: Duration,
    },
    /// The gRPC (HTTP/2) connection over the vsock stream failed.
    #[error("gRPC connection to guest port {port}: {source}")]
    Transport {
        /// The guest port.
        port: u32,
        /// tonic's error.
        source: tonic::transport::Error,
    },
    /// The agent answered its first `Ping` with an error.
    #[error("agent on guest port {port} did not answer Ping: {status}")]
    Ping {
        /// The guest port.
        port: u32,
        /// The status it answered.
        status: tonic::Status,
    },
    /// [`connect_with_retry`] ran out of time.
    #[error("agent on guest port {port} not ready after {waited:?} ({attempts} attempts); last error: {last}")]
    NotReady {
        /// The guest port.
        port: u32,
        /// How long it tried.
        waited: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },
}

/// The deadline of agent calls: `$VPOD_AGENT_CALL_TIMEOUT` seconds if set
/// and valid, else [`DEFAULT_CALL_TIMEOUT`].
pub fn call_timeout() -> Duration {
    std::env::var(CALL_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(DEFAULT_CALL_TIMEOUT)
}

/// The agent's gRPC channel with a deadline on every call.
///
/// A unary call must be answered within the deadline; a streaming call
/// (Attach, Exec, Logs, Health) must be set up within it (the agent's
/// response headers), after which its stream lasts as long as it needs.
/// WaitContainer, StopContainer and WriteStdin have none. A missed deadline
/// is the status `DEADLINE_EXCEEDED` "agent did not answer `<Rpc>` within
/// `<d>`".
#[derive(Clone, Debug)]
pub struct AgentChannel {
    inner: Channel,
    timeout: Duration,
}

impl AgentChannel {
    /// `inner` with `timeout` as the deadline of bounded calls.
    pub fn new(inner: Channel, timeout: Duration) -> Self {
        AgentChannel { inner, timeout }
    }

    /// The deadline of bounded calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A channel with the deadline of [`call_timeout`].
impl From<Channel> for AgentChannel {
    fn from(inner: Channel) -> Self {
        AgentChannel::new(inner, call_timeout())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

/// The RPC's name from its path (`/vpod.agent.v1.Agent/ContainerStats`).
fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl tower::Service<http::Request<tonic::body::Body>> for AgentChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let rpc = rpc_name(req.uri().path()).to_owned();
        let timeout = self.timeout;
        let call = tower::Service::call(&mut self.inner, req);
        Box::pin(async move {
            if UNBOUNDED_CALLS.contains(&rpc.as_str()) {
                return call.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, call).await {
                Ok(r) => r.map_err(Into::into),
                // A Status inside the error is what tonic hands the caller.
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "agent did not answer {rpc} within {timeout:?}"
                ))) as BoxError),
            }
        })
    }
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
/// Its calls have the deadline of [`call_timeout`].
pub async fn connect(uds_path: &Path, port: u32) -> Result<AgentClient<AgentChannel>, Error> {
    connect_with_timeout(uds_path, port, call_timeout()).await
}

/// [`connect`] with `call_timeout` as the deadline of every call.
pub async fn connect_with_timeout(
    uds_path: &Path,
    port: u32,
    call_timeout: Duration,
) -> Result<AgentClient<AgentChannel>, Error> {
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
    Ok(AgentClient::new(AgentChannel::new(channel, call_timeout)))
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
) -> Result<AgentClient<AgentChannel>, Error> {
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

    /// A fake agent behind a fake VMM: the vsock handshake succeeds and a
    /// real gRPC server runs on the connection, but no call is ever answered
    /// (a hung guest). Returns the socket and how many calls arrived.
    async fn silent_agent() -> (tempdir::Dir, PathBuf, Arc<std::sync::atomic::AtomicU32>) {
        use std::convert::Infallible;
        use std::sync::atomic::{AtomicU32, Ordering};

        #[derive(Clone)]
        struct Silent(Arc<AtomicU32>);
        impl tower::Service<http::Request<tonic::body::Body>> for Silent {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
                self.0.fetch_add(1, Ordering::SeqCst);
                Box::pin(std::future::pending())
            }
        }
        impl tonic::server::NamedService for Silent {
            const NAME: &'static str = "vpod.agent.v1.Agent";
        }

        let dir = tempdir::Dir::new();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<UnixStream>>(4);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        break;
                    }
                    line.push(b[0]);
                }
                s.write_all(b"OK 5000\n").await.unwrap();
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
        });
        let calls = Arc::new(AtomicU32::new(0));
        let svc = Silent(calls.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
        );
        (dir, path, calls)
    }

    /// Issue 12 item 12: a guest that never answers fails a call at its
    /// deadline, with the call named, instead of stalling the caller.
    #[tokio::test]
    async fn a_call_the_agent_never_answers_fails_at_its_deadline() {
        use crate::pb::{ContainerRef, KillContainerRequest};
        let (_dir, path, calls) = silent_agent().await;
        let deadline = Duration::from_millis(300);
        let mut c = connect_with_timeout(&path, 1024, deadline).await.unwrap();
        let bounded = Duration::from_secs(10);

        let t0 = Instant::now();
        let st = tokio::time::timeout(bounded, c.container_stats(ContainerRef { id: "a".into() }))
            .await
            .expect("ContainerStats stalled: no deadline")
            .unwrap_err();
        let took = t0.elapsed();
        assert_eq!(st.code(), tonic::Code::DeadlineExceeded, "{st:?}");
        assert_eq!(
            st.message(),
            "agent did not answer ContainerStats within 300ms"
        );
        assert!(
            took >= deadline && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(
            calls.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the call reached the agent"
        );

        let st = tokio::time::timeout(
            bounded,
            c.kill_container(KillContainerRequest {
                id: "a".into(),
                signal: 9,
                all: false,
            }),
        )
        .await
        .expect("KillContainer stalled: no deadline")
        .unwrap_err();
        assert!(st.message().contains("KillContainer"), "{st:?}");

        // A stream's setup has the deadline too.
        let st = tokio::time::timeout(bounded, c.attach(ContainerRef { id: "a".into() }))
            .await
            .expect("Attach stalled: no deadline")
            .unwrap_err();
        assert_eq!(st.message(), "agent did not answer Attach within 300ms");

        // Waiting for a container is not cut short.
        let wait = c.wait_container(ContainerRef { id: "a".into() });
        assert!(
            tokio::time::timeout(deadline * 3, wait).await.is_err(),
            "WaitContainer must wait as long as the container runs"
        );
    }

    #[test]
    fn the_call_timeout_comes_from_the_environment_or_the_default() {
        // One test touches the variable: no other test reads it.
        std::env::remove_var(CALL_TIMEOUT_ENV);
        assert_eq!(call_timeout(), DEFAULT_CALL_TIMEOUT);
        std::env::set_var(CALL_TIMEOUT_ENV, "2.5");
        assert_eq!(call_timeout(), Duration::from_millis(2500));
        for bad in ["0", "-1", "soon", "NaN"] {
            std::env::set_var(CALL_TIMEOUT_ENV, bad);
            assert_eq!(call_timeout(), DEFAULT_CALL_TIMEOUT, "{bad}");
        }
        std::env::remove_var(CALL_TIMEOUT_ENV);
        assert_eq!(
            rpc_name("/vpod.agent.v1.Agent/ContainerStats"),
            "ContainerStats"
        );
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
