//! Tells the host the agent is up: a guest-initiated vsock call to the host (CID 2) on
//! [`AGENT_READY_PORT`], see `vpod_agent_api::ready`. Best effort: a host that doesn't listen
//! just polls the agent instead.

use std::sync::Arc;
use std::time::Duration;

use tokio_vsock::{VsockAddr, VsockStream};
use vpod_agent_api::ready::{announce_ready, AGENT_READY_PORT};

use crate::clock::Stamp;
use crate::log::AgentLog;

/// The host's CID in vsock addressing.
const VMADDR_CID_HOST: u32 = 2;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tells the host the agent listens (the ready port), with `listening`'s stamps; failures are
/// logged, not fatal.
pub async fn notify_host(listening: Stamp, log: Arc<AgentLog>) {
    let exchange = async {
        let mut s = VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, AGENT_READY_PORT)).await?;
        announce_ready(&mut s, listening.boottime_ns)
            .await
            .map_err(std::io::Error::other)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(())) => log.info(format!(
            "host acknowledged readiness on vsock port {AGENT_READY_PORT} (ACK {})",
            listening.boottime_ns
        )),
        Ok(Err(e)) => log.info(format!(
            "no readiness listener on host vsock port {AGENT_READY_PORT}: {e}"
        )),
        Err(_) => log.warn(format!(
            "host vsock port {AGENT_READY_PORT} did not acknowledge readiness in {EXCHANGE_TIMEOUT:?}"
        )),
    }
}
