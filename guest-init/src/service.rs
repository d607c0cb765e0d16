//! The `vpod.agent.v1.Agent` gRPC service and the server loop around it.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use vpod_agent_api::pb::{
    BootTimesRequest, BootTimesResponse, ContainerRef, ContainerStatsResponse,
    CreateContainerRequest, CreateContainerResponse, ExecInput, ExecOutput, ExitStatus,
    HealthReport, HealthRequest, KillContainerRequest, KillContainerResponse,
    ListContainersRequest, ListContainersResponse, LogEntry, LogSource, LogsRequest,
    MountEphemeralRequest, MountEphemeralResponse, OutputChunk, PingRequest, PingResponse,
    PutVolumeRequest, PutVolumeResponse, RemoveContainerResponse, ResizeTtyRequest,
    ResizeTtyResponse, ShutdownKind, ShutdownRequest, ShutdownResponse, StartContainerResponse,
    StdinChunk, StopContainerRequest, UpdateContainerRequest, UpdateContainerResponse,
    VersionRequest, VersionResponse, WriteStdinResponse,
};
use vpod_agent_api::{AgentServer, API_VERSION};

use crate::clock::{boottime_ns, realtime_ns, Stamp};
use crate::health::read_health;
use crate::kmsg::{KmsgReader, ReadOutcome};
use crate::log::AgentLog;
use crate::pod::Pod;

/// Smallest `Health` interval accepted; below it a client floods itself.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// Items buffered per streaming RPC before the producer waits for the client.
const STREAM_BUFFER: usize = 128;

use crate::pod::RpcStream;

/// What the service needs to know about its guest.
#[derive(Debug)]
pub struct AgentConfig {
    /// When vpod-init's main() began.
    pub init_start: Stamp,
    /// When the listener was bound.
    pub agent_listening: Stamp,
    /// The kernel log device (`/dev/kmsg`; a file in tests).
    pub kmsg_path: PathBuf,
    /// procfs mount (`/proc`).
    pub proc_root: PathBuf,
    /// The agent's own log, shared with the rest of init.
    pub log: Arc<AgentLog>,
    /// Waits for every child; containers and execs claim their statuses here.
    pub reaper: Arc<crate::reaper::Reaper>,
}

/// The agent service. Create with [`AgentService::new`], run with [`serve`].
#[derive(Debug)]
pub struct AgentService {
    cfg: Arc<AgentConfig>,
    pod: Pod,
    shutdown_tx: watch::Sender<Option<ShutdownKind>>,
}

/// Resolves once a `Shutdown` RPC was accepted.
#[derive(Debug, Clone)]
pub struct ShutdownRequested(watch::Receiver<Option<ShutdownKind>>);

impl ShutdownRequested {
    /// The kind of the accepted Shutdown (never resolves if the service goes away without one).
    pub async fn wait(&mut self) -> ShutdownKind {
        loop {
            if let Some(kind) = *self.0.borrow_and_update() {
                return kind;
            }
            if self.0.changed().await.is_err() {
                // The service is gone without a request: never resolves.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The accepted Shutdown's kind, if there was one.
    pub fn get(&self) -> Option<ShutdownKind> {
        *self.0.borrow()
    }
}

impl AgentService {
    /// The service, and the handle that learns of a Shutdown RPC.
    pub fn new(cfg: AgentConfig) -> (Self, ShutdownRequested) {
        let (shutdown_tx, rx) = watch::channel(None);
        (
            AgentService {
                pod: Pod::new(cfg.reaper.clone(), cfg.log.clone()),
                cfg: Arc::new(cfg),
                shutdown_tx,
            },
            ShutdownRequested(rx),
        )
    }
}

/// Why [`serve`] returned.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("agent gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener ended before a Shutdown.
    #[error("agent listener stopped accepting connections without a Shutdown request")]
    IncomingEnded,
}

/// Serves `service` on `incoming` until a `Shutdown` RPC is accepted, then
/// lets open connections finish (at most `drain`, so a client following logs
/// cannot hold the guest up) and returns the requested kind. The `Shutdown`
/// reply itself is flushed during the drain: "reply first, then go down".
pub async fn serve<I, IO, IE>(
    service: AgentService,
    mut shutdown: ShutdownRequested,
    incoming: I,
    drain: Duration,
) -> Result<ShutdownKind, ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut signal_rx = shutdown.clone();
    let signal = async move {
        signal_rx.wait().await;
    };
    let server =
        Server::builder().serve_with_incoming_shutdown(AgentServer::new(service), incoming, signal);
    tokio::pin!(server);

    tokio::select! {
        res = &mut server => res?,
        _ = shutdown.wait() => {
            // Timing out only cuts off lingering streams; the result of the
            // drain does not change what was asked for.
            let _ = tokio::time::timeout(drain, &mut server).await;
        }
    }
    shutdown.get().ok_or(ServeError::IncomingEnded)
}

#[tonic::async_trait]
impl vpod_agent_api::Agent for AgentService {
    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.pod.create_container(req).await
    }

    async fn start_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.pod.start_container(req).await
    }

    type AttachStream = RpcStream<OutputChunk>;

    async fn attach(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        self.pod.attach(req)
    }

    async fn write_stdin(
        &self,
        req: Request<tonic::Streaming<StdinChunk>>,
    ) -> Result<Response<WriteStdinResponse>, Status> {
        self.pod.write_stdin(req).await
    }

    async fn kill_container(
        &self,
        req: Request<KillContainerRequest>,
    ) -> Result<Response<KillContainerResponse>, Status> {
        self.pod.kill(req)
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<ExitStatus>, Status> {
        self.pod.stop(req).await
    }

    async fn wait_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ExitStatus>, Status> {
        self.pod.wait(req).await
    }

    async fn remove_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.pod.remove(req).await
    }

    async fn list_containers(
        &self,
        _req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(self.pod.list())
    }

    async fn container_stats(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        self.pod.stats(req)
    }

    async fn resize_tty(
        &self,
        req: Request<ResizeTtyRequest>,
    ) -> Result<Response<ResizeTtyResponse>, Status> {
        self.pod.resize(req)
    }

    async fn update_container(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        self.pod.update(req)
    }

    type ExecStream = RpcStream<ExecOutput>;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.pod.exec(req).await
    }

    type PortForwardStream = RpcStream<vpod_agent_api::pb::PortForwardOutput>;

    async fn port_forward(
        &self,
        req: Request<tonic::Streaming<vpod_agent_api::pb::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        crate::portforward::port_forward(req).await
    }

    async fn put_volume(
        &self,
        req: Request<PutVolumeRequest>,
    ) -> Result<Response<PutVolumeResponse>, Status> {
        self.pod.put_volume(req).await
    }

    async fn configure_network(
        &self,
        req: Request<vpod_agent_api::pb::ConfigureNetworkRequest>,
    ) -> Result<Response<vpod_agent_api::pb::ConfigureNetworkResponse>, Status> {
        let r = req.into_inner();
        crate::net::configure(&r).map_err(|e| match e {
            crate::net::NetError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            crate::net::NetError::Io { .. } => Status::failed_precondition(e.to_string()),
        })?;
        self.cfg.log.info(format!("network configured: {r:?}"));
        Ok(Response::new(
            vpod_agent_api::pb::ConfigureNetworkResponse {},
        ))
    }

    async fn mount_ephemeral(
        &self,
        req: Request<MountEphemeralRequest>,
    ) -> Result<Response<MountEphemeralResponse>, Status> {
        self.pod.mount_ephemeral(req).await
    }

    async fn version(
        &self,
        _req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let uts =
            nix::sys::utsname::uname().map_err(|e| Status::internal(format!("uname: {e}")))?;
        Ok(Response::new(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: uts.release().to_string_lossy().into_owned(),
            kernel_version: uts.version().to_string_lossy().into_owned(),
            machine: uts.machine().to_string_lossy().into_owned(),
            api_version: API_VERSION,
        }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            token: req.into_inner().token,
            boottime_ns: boottime_ns(),
        }))
    }

    async fn boot_times(
        &self,
        _req: Request<BootTimesRequest>,
    ) -> Result<Response<BootTimesResponse>, Status> {
        let cfg = &self.cfg;
        Ok(Response::new(BootTimesResponse {
            kernel_start_boottime_ns: 0,
            init_start_boottime_ns: cfg.init_start.boottime_ns,
            agent_listening_boottime_ns: cfg.agent_listening.boottime_ns,
            init_start_realtime_ns: cfg.init_start.realtime_ns,
            agent_listening_realtime_ns: cfg.agent_listening.realtime_ns,
            now_boottime_ns: boottime_ns(),
            now_realtime_ns: realtime_ns(),
        }))
    }

    type LogsStream = RpcStream<LogEntry>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let source = LogSource::try_from(req.source)
            .map_err(|_| Status::invalid_argument(format!("unknown log source {}", req.source)))?;
        let want_kernel = matches!(source, LogSource::All | LogSource::Kernel);
        let want_agent = matches!(source, LogSource::All | LogSource::Agent);

        // Opened here so a missing /dev/kmsg fails the call, not the stream.
        let kmsg = if want_kernel {
            let path = &self.cfg.kmsg_path;
            Some(KmsgReader::open(path).map_err(|e| {
                Status::unavailable(format!("open kernel log {}: {e}", path.display()))
            })?)
        } else {
            None
        };

        if !req.follow {
            let mut lines = Vec::new();
            if let Some(mut kmsg) = kmsg {
                lines = kmsg.read_available().map_err(|e| {
                    Status::internal(format!(
                        "read kernel log {}: {e}",
                        self.cfg.kmsg_path.display()
                    ))
                })?;
            }
            if want_agent {
                lines.extend(self.cfg.log.snapshot());
            }
            return Ok(Response::new(Box::pin(tokio_stream::iter(
                lines.into_iter().map(Ok),
            ))));
        }

        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        if let Some(kmsg) = kmsg {
            tokio::spawn(follow_kernel(
                kmsg,
                self.cfg.kmsg_path.display().to_string(),
                tx.clone(),
            ));
        }
        if want_agent {
            let (backlog, live) = self.cfg.log.snapshot_and_subscribe();
            tokio::spawn(follow_agent(backlog, live, tx));
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type HealthStream = RpcStream<HealthReport>;

    async fn health(
        &self,
        req: Request<HealthRequest>,
    ) -> Result<Response<Self::HealthStream>, Status> {
        let interval_ms = req.into_inner().interval_ms;
        let interval = Duration::from_millis(u64::from(interval_ms));
        if interval_ms != 0 && interval < MIN_HEALTH_INTERVAL {
            return Err(Status::invalid_argument(format!(
                "health interval {interval_ms} ms is below the minimum {} ms",
                MIN_HEALTH_INTERVAL.as_millis()
            )));
        }
        let proc_root = self.cfg.proc_root.clone();
        let first = read_health(&proc_root).map_err(|e| Status::internal(e.to_string()))?;
        if interval_ms == 0 {
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(first)))));
        }

        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut report = Ok(first);
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await; // the first tick is immediate: `first` covers it
            loop {
                let failed = report.is_err();
                if tx.send(report).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = tx.closed() => return,
                }
                report = read_health(&proc_root).map_err(|e| Status::internal(e.to_string()));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let raw = req.into_inner().kind;
        let kind = ShutdownKind::try_from(raw)
            .map_err(|_| Status::invalid_argument(format!("unknown shutdown kind {raw}")))?;
        let accepted = self.shutdown_tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(kind);
                true
            } else {
                false
            }
        });
        if accepted {
            self.cfg
                .log
                .notice(format!("shutdown requested: {}", kind.as_str_name()));
        } else {
            self.cfg.log.info(format!(
                "repeated shutdown request ({}) ignored",
                kind.as_str_name()
            ));
        }
        Ok(Response::new(ShutdownResponse {}))
    }
}

/// Streams the kernel log backlog, then new records as the kernel logs them,
/// until the client goes away.
async fn follow_kernel(
    mut kmsg: KmsgReader,
    path: String,
    tx: mpsc::Sender<Result<LogEntry, Status>>,
) {
    let read_err = |e: std::io::Error| Status::internal(format!("read kernel log {path}: {e}"));

    let clone = match kmsg.file().try_clone() {
        Ok(file) => file,
        Err(e) => {
            let _ = tx.send(Err(read_err(e))).await;
            return;
        }
    };
    // SAFETY: the AsyncFd owns `clone`, a File whose descriptor stays open
    // and unchanged until the AsyncFd is dropped.
    let registered = unsafe { AsyncFd::register(clone) }.map_err(|e| e.into_parts().1);
    let fd = match registered {
        Ok(fd) => fd,
        // epoll refuses regular files (tests): send what it has and stop.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let lines = match kmsg.read_available() {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = tx.send(Err(read_err(e))).await;
                    return;
                }
            };
            for line in lines {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            return;
        }
        Err(e) => {
            let _ = tx.send(Err(read_err(e))).await;
            return;
        }
    };

    let mut batch = Vec::new();
    loop {
        // Drain everything readable, then wait for more.
        loop {
            match kmsg.read_once(&mut batch) {
                Ok(ReadOutcome::Records) => {
                    for line in batch.drain(..) {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(ReadOutcome::WouldBlock) => break,
                Ok(ReadOutcome::Eof) => return,
                Err(e) => {
                    let _ = tx.send(Err(read_err(e))).await;
                    return;
                }
            }
        }
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    let _ = tx.send(Err(read_err(e))).await;
                    return;
                }
            },
            _ = tx.closed() => return,
        }
    }
}

/// Streams the agent log backlog, then every new line, until the client goes
/// away. A follower that falls too far behind skips lines (seq shows the gap).
async fn follow_agent(
    backlog: Vec<LogEntry>,
    mut live: broadcast::Receiver<LogEntry>,
    tx: mpsc::Sender<Result<LogEntry, Status>>,
) {
    for line in backlog {
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    loop {
        let line = tokio::select! {
            r = live.recv() => match r {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        };
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
}
