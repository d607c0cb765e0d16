//! Port-forward: "localhost in the pod" is the guest's loopback, not the pod netns's.
//!
//! containerd's PortForward (what `kubectl port-forward` reaches) dials `localhost:PORT` inside
//! the pod's netns on the host; with a VM nothing listens there. So each pod with a netns gets a
//! steering ([`steer`]): one listener of ours on `127.0.0.2` in that netns, and a NAT rule that
//! sends every TCP connection to `127.0.0.1:*` there to it. The listener reads the port the
//! caller dialed back from conntrack (`SO_ORIGINAL_DST`) and [`forward`]s the connection over
//! vsock to the agent, which dials the guest's own `127.0.0.1:PORT`:
//!
//! ```text
//! containerd ─(pod netns) 127.0.0.1:8080 ─DNAT─► 127.0.0.2:L (Forwarder) ─agent PortForward─►
//!     guest 127.0.0.1:8080 (a container's server)
//! ```
//!
//! The guest's traffic never enters the netns's IP stack (tc redirects the tap to the veth), so
//! the listener is out of the guest's reach. A port nothing listens on in the guest resets the
//! caller's connection at once. [`forward`] is also what a CRI server's own streaming uses.

mod steer;

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use vpod_agent_api::pb::{port_forward_input::Input, PortForwardInput, PortForwardOutput};

use crate::pod::{PodAgent, PodError};
pub use steer::{steer, SteerError, LISTEN_ADDR};

/// Bytes per message to the guest.
const CHUNK: usize = 32 * 1024;
/// How long the guest gets to open its side of a connection (vsock connect, agent call, dial).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections forwarded at once per pod; more are closed (each holds a host socket and task).
pub const MAX_CONNECTIONS: usize = 256;

/// Copies `conn` both ways through the agent to the guest's `127.0.0.1:port` until both
/// directions have ended: the caller's EOF becomes a write-side shutdown in the guest, the
/// guest's EOF a shutdown of `conn`'s write side. Fails (before touching `conn`) when nothing
/// listens on the port in the guest.
pub async fn forward<S>(agent: &PodAgent, port: u16, conn: S) -> Result<(), PodError>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let guest = agent.port_forward(port).await?;
    pipe(port, guest, conn).await;
    Ok(())
}

/// The copy of [`forward`], once the guest's connection is open.
async fn pipe<S>(port: u16, guest: GuestConn, conn: S)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (tx, mut out) = guest;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await.unwrap_or(0);
            let input = if n == 0 {
                Input::CloseWrite(true)
            } else {
                Input::Data(buf[..n].to_vec())
            };
            let sent = tx.send(PortForwardInput { input: Some(input) }).await;
            if n == 0 || sent.is_err() {
                break;
            }
        }
    };
    let down = async {
        loop {
            match out.message().await {
                Ok(Some(m)) => {
                    if let Err(e) = wr.write_all(&m.data).await {
                        tracing::debug!("port-forward to {port}: the caller's side: {e}");
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(
                        "port-forward to {port}: the guest's side: {:?}: {}{}",
                        status.code(),
                        status.message(),
                        source_chain(&status)
                    );
                    break;
                }
            }
        }
        let _ = wr.shutdown().await;
    };
    // The input stays open (tx lives) until both are done: its end tells the agent to close.
    tokio::join!(up, down);
    drop(tx);
}

/// `: cause: its cause...` of `e` (what a transport error's message leaves out).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(&format!(": {cause}"));
        next = cause.source();
    }
    out
}

/// The guest's side of a connection: its input's sender and its output.
type GuestConn = (
    tokio::sync::mpsc::Sender<PortForwardInput>,
    tonic::Streaming<PortForwardOutput>,
);

/// A pod's steered loopback: accepts what [`steer`]'s rule sends to its listener and forwards
/// each connection to the guest. Dropping it closes the listener and every connection, so the
/// netns is not held.
#[derive(Debug)]
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Serves `listener` (made by [`steer`]) for pod `id`, whose VMM's vsock socket is `vsock`.
    /// Each connection gets an agent connection of its own: a forward that stalls (a caller that
    /// stops reading) then holds only its own HTTP/2 windows, never those of the pod's other
    /// calls. Needs a tokio runtime.
    pub fn start(
        id: &str,
        vsock: PathBuf,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Forwarder> {
        let id = id.to_owned();
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection goes with it.
            let mut conns = JoinSet::new();
            loop {
                let conn = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        // EMFILE and the like: wait rather than spin.
                        tracing::warn!("port-forward accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                while conns.try_join_next().is_some() {}
                let port = match steer::original_port(&conn) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("port-forward: a connection not steered here: {e}");
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(
                        "port-forward to {port}: {MAX_CONNECTIONS} connections already; closed"
                    );
                    continue;
                }
                let _ = conn.set_nodelay(true);
                let (id, vsock) = (id.clone(), vsock.clone());
                conns.spawn(async move {
                    // A guest that never answers the connect costs this connection only.
                    let open = async {
                        let agent = PodAgent::connect(&id, &vsock).await?;
                        let guest = agent.port_forward(port).await?;
                        Ok::<_, PodError>((agent, guest))
                    };
                    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
                        // The agent's channel lives as long as the copy: its connection is
                        // the copy's.
                        Ok(Ok((_agent, guest))) => pipe(port, guest, conn).await,
                        Err(_) => {
                            let _ = conn.set_zero_linger();
                            tracing::info!(
                                "pod {id}: port-forward to {port}: the guest did not answer \
                                 within {OPEN_TIMEOUT:?}"
                            );
                        }
                        Ok(Err(e)) => {
                            // A reset, not an EOF: the caller's copy fails and says so (containerd
                            // writes it on the port's error stream, as when its own dial fails).
                            let _ = conn.set_zero_linger();
                            tracing::info!("{e}");
                        }
                    }
                });
            }
        });
        Ok(Forwarder { task })
    }

    /// Closes the listener and every connection (also done on drop).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}
