//! The agent's PortForward: one TCP connection to the guest's own `127.0.0.1:PORT`, the pod's
//! localhost (every container shares the guest's network stack), carried over the RPC's two
//! streams. The input's first message names the port; later ones carry bytes or the end of them
//! (a write-side shutdown). The output carries what the connection sends and ends at its EOF.
//! The input's end is the caller's end: the connection is closed then, whatever it still sends,
//! so a caller that goes leaves no socket and no task behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vpod_agent_api::pb::{port_forward_input::Input, PortForwardInput, PortForwardOutput};

use crate::pod::RpcStream;

/// A loopback connect answers at once; one that doesn't (a full accept queue) is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per output message.
const CHUNK: usize = 32 * 1024;
/// Output messages buffered before the connection's reader waits for the caller.
const OUTPUT_DEPTH: usize = 16;

/// Serves one PortForward call.
pub async fn port_forward(
    req: Request<Streaming<PortForwardInput>>,
) -> Result<Response<RpcStream<PortForwardOutput>>, Status> {
    let mut input = req.into_inner();
    let port = match input.message().await? {
        Some(PortForwardInput {
            input: Some(Input::Port(p)),
        }) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("port {p}: not in 1..=65535")))?,
        _ => {
            return Err(Status::invalid_argument(
                "the first PortForward message must carry the port",
            ))
        }
    };
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    .map_err(|_| Status::unavailable(format!("connect to 127.0.0.1:{port} in the pod: timed out")))?
    .map_err(|e| Status::unavailable(format!("connect to 127.0.0.1:{port} in the pod: {e}")))?;
    let _ = conn.set_nodelay(true);
    let (mut rd, mut wr) = conn.into_split();

    let (tx, rx) = mpsc::channel(OUTPUT_DEPTH);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let msg = match rd.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => Ok(PortForwardOutput {
                    data: buf[..n].to_vec(),
                }),
                Err(e) => Err(Status::aborted(format!("127.0.0.1:{port}: {e}"))),
            };
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    tokio::spawn(async move {
        loop {
            match input.message().await {
                Ok(Some(PortForwardInput {
                    input: Some(Input::Data(d)),
                })) => {
                    if wr.write_all(&d).await.is_err() {
                        break;
                    }
                }
                Ok(Some(PortForwardInput {
                    input: Some(Input::CloseWrite(_)),
                })) => {
                    let _ = wr.shutdown().await;
                }
                // A second port or an empty message: the caller broke the protocol.
                Ok(Some(_)) | Ok(None) | Err(_) => break,
            }
        }
        // Dropping both halves closes the connection.
        reader.abort();
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
