//! The pod side of the agent service: containers, exec, volumes, disks.
//! `service.rs` forwards the RPCs here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use vpod_agent_api::pb::{
    exec_input, exec_output, ContainerRef, ContainerStatsResponse, CreateContainerRequest,
    CreateContainerResponse, ExecInput, ExecOutput, ExitStatus, KillContainerRequest,
    KillContainerResponse, ListContainersResponse, MountEphemeralRequest, MountEphemeralResponse,
    OutputChunk, PutVolumeRequest, PutVolumeResponse, RemoveContainerResponse, ResizeTtyRequest,
    ResizeTtyResponse, StartContainerResponse, StdinChunk, StopContainerRequest,
    UpdateContainerRequest, UpdateContainerResponse, WriteStdinResponse,
};

use crate::clock::boottime_ns;
use crate::container::{stdio, Containers};
use crate::disks::Disks;
use crate::log::AgentLog;
use crate::reaper::Reaper;
use crate::volumes::Volumes;

/// A server-streaming RPC's response stream.
pub type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Everything the pod RPCs act on.
#[derive(Debug)]
pub struct Pod {
    /// The pod's containers.
    pub containers: Arc<Containers>,
    /// The pod's volumes.
    pub volumes: Arc<Volumes>,
    /// The pod's image and ephemeral disks.
    pub disks: Arc<Disks>,
}

impl Pod {
    /// No containers, volumes or disks yet.
    pub fn new(reaper: Arc<Reaper>, log: Arc<AgentLog>) -> Self {
        let disks = Arc::new(Disks::default());
        let volumes = Arc::new(Volumes::default());
        Pod {
            containers: Arc::new(Containers::new(reaper, disks.clone(), volumes.clone(), log)),
            volumes,
            disks,
        }
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.containers.create(req.into_inner()).await?;
        Ok(Response::new(CreateContainerResponse {}))
    }

    /// StartContainer.
    pub async fn start_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let pid = self.containers.start(&req.into_inner().id).await?;
        Ok(Response::new(StartContainerResponse {
            pid: pid as u32,
            started_boottime_ns: boottime_ns(),
        }))
    }

    /// Attach: the container's output until its pipes close.
    pub fn attach(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<RpcStream<OutputChunk>>, Status> {
        let rx = self.containers.attach(&req.into_inner().id)?;
        Ok(Response::new(Box::pin(attach_stream(rx))))
    }

    /// WriteStdin: the first chunk names the container (and whether the
    /// stream's end closes its stdin).
    pub async fn write_stdin(
        &self,
        req: Request<Streaming<StdinChunk>>,
    ) -> Result<Response<WriteStdinResponse>, Status> {
        let mut input = req.into_inner();
        let mut id = String::new();
        let mut close = false;
        let mut written = 0u64;
        while let Some(chunk) = input.message().await? {
            if id.is_empty() {
                id = chunk.id.clone();
                close = chunk.close_on_end;
                if id.is_empty() {
                    return Err(Status::invalid_argument(
                        "the first stdin chunk must name the container",
                    ));
                }
            }
            self.containers.write_stdin(&id, &chunk.data, false).await?;
            written += chunk.data.len() as u64;
        }
        if close && !id.is_empty() {
            self.containers.write_stdin(&id, &[], true).await?;
        }
        Ok(Response::new(WriteStdinResponse {
            bytes_written: written,
        }))
    }

    /// KillContainer.
    pub fn kill(
        &self,
        req: Request<KillContainerRequest>,
    ) -> Result<Response<KillContainerResponse>, Status> {
        let r = req.into_inner();
        self.containers.kill(&r.id, r.signal, r.all)?;
        Ok(Response::new(KillContainerResponse {}))
    }

    /// StopContainer.
    pub async fn stop(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<ExitStatus>, Status> {
        let r = req.into_inner();
        let grace = Duration::from_millis(r.grace_period_ms as u64);
        Ok(Response::new(
            self.containers.stop(&r.id, grace, r.signal).await?,
        ))
    }

    /// WaitContainer.
    pub async fn wait(&self, req: Request<ContainerRef>) -> Result<Response<ExitStatus>, Status> {
        Ok(Response::new(
            self.containers.wait(&req.into_inner().id).await?,
        ))
    }

    /// RemoveContainer.
    pub async fn remove(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.containers.remove(&req.into_inner().id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    /// ListContainers.
    pub fn list(&self) -> Response<ListContainersResponse> {
        Response::new(ListContainersResponse {
            containers: self.containers.list(),
        })
    }

    /// ContainerStats.
    pub fn stats(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        Ok(Response::new(self.containers.stats(&req.into_inner().id)?))
    }

    /// ResizeTty.
    pub fn resize(
        &self,
        req: Request<ResizeTtyRequest>,
    ) -> Result<Response<ResizeTtyResponse>, Status> {
        let r = req.into_inner();
        self.containers
            .resize(&r.id, clamp16(r.rows), clamp16(r.cols))?;
        Ok(Response::new(ResizeTtyResponse {}))
    }

    /// UpdateContainer.
    pub fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let r = req.into_inner();
        self.containers
            .update(&r.id, &r.limits.unwrap_or_default())?;
        Ok(Response::new(UpdateContainerResponse {}))
    }

    /// Exec: the first input message starts the process; then stdin, resizes and signals in, output
    /// and the exit status out.
    pub async fn exec(
        &self,
        req: Request<Streaming<ExecInput>>,
    ) -> Result<Response<RpcStream<ExecOutput>>, Status> {
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("exec: empty input stream"))?;
        let Some(exec_input::Input::Start(start)) = first.input else {
            return Err(Status::invalid_argument(
                "exec: the first message must be `start`",
            ));
        };
        let process = start
            .process
            .ok_or_else(|| Status::invalid_argument("exec: start carries no process"))?;
        let (handle, io) = self.containers.exec(&start.container_id, &process).await?;

        let (tx, rx) = mpsc::channel::<Result<ExecOutput, Status>>(64);
        let out_tx = tx.clone();
        let out = tokio::spawn(stdio::pump(io.out, out_tx, |b| {
            Ok(ExecOutput {
                output: Some(exec_output::Output::Stdout(b)),
            })
        }));
        let err = io.err.map(|fd| {
            tokio::spawn(stdio::pump(fd, tx.clone(), |b| {
                Ok(ExecOutput {
                    output: Some(exec_output::Output::Stderr(b)),
                })
            }))
        });
        // Input: stdin bytes, resizes, end of stdin. A client that stops
        // sending leaves the process running until it exits by itself.
        let mut stdin = io.input;
        let pty = io.pty;
        let is_tty = pty.is_some();
        let pid = nix::unistd::Pid::from_raw(handle.pid());
        // Set once the exit is reported: later signals are dropped rather than
        // sent to a pid that may be reused (the window before it is set is the
        // few microseconds between the reap and the report).
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_in = done.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.input {
                    Some(exec_input::Input::Stdin(data)) => {
                        if let Some(fd) = &stdin {
                            if stdio::write_all(fd, &data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some(exec_input::Input::Resize(r)) => {
                        if let Some(p) = &pty {
                            let _ = stdio::resize(p, clamp16(r.rows), clamp16(r.cols));
                        }
                    }
                    Some(exec_input::Input::CloseStdin(true)) if !is_tty => stdin = None,
                    Some(exec_input::Input::Signal(sig)) => {
                        if done_in.load(std::sync::atomic::Ordering::SeqCst) {
                            continue;
                        }
                        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                            let _ = nix::sys::signal::kill(pid, sig);
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::spawn(async move {
            let status = handle.wait().await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            // All output first, then the exit.
            let _ = out.await;
            if let Some(e) = err {
                let _ = e.await;
            }
            let _ = tx
                .send(Ok(ExecOutput {
                    output: Some(exec_output::Output::Exit(status)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// PutVolume.
    pub async fn put_volume(
        &self,
        req: Request<PutVolumeRequest>,
    ) -> Result<Response<PutVolumeResponse>, Status> {
        let r = req.into_inner();
        let volumes = self.volumes.clone();
        let disks = self.disks.clone();
        let gen = tokio::task::spawn_blocking(move || volumes.put(&r, || disks.ephemeral()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::volumes::VolumeError::BadName(_)
                | crate::volumes::VolumeError::BadPath { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                crate::volumes::VolumeError::MediumChanged(_)
                | crate::volumes::VolumeError::Disk(_) => {
                    Status::failed_precondition(e.to_string())
                }
                _ => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(PutVolumeResponse { generation: gen }))
    }

    /// MountEphemeral.
    pub async fn mount_ephemeral(
        &self,
        req: Request<MountEphemeralRequest>,
    ) -> Result<Response<MountEphemeralResponse>, Status> {
        let serial = req.into_inner().disk;
        let disks = self.disks.clone();
        let path = tokio::task::spawn_blocking(move || disks.mount_ephemeral(&serial))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let st = nix::sys::statvfs::statvfs(&path)
            .map_err(|e| Status::internal(format!("statvfs {}: {e}", path.display())))?;
        let frag = st.fragment_size();
        Ok(Response::new(MountEphemeralResponse {
            size_bytes: st.blocks() * frag,
            free_bytes: st.blocks_available() * frag,
        }))
    }
}

fn clamp16(v: u32) -> u16 {
    v.min(u16::MAX as u32) as u16
}

/// A stream over an attached container's output until its pipes close.
/// Holding the receiver's lock for as long as the client's stream lives is
/// what makes attaching exclusive.
fn attach_stream(
    rx: tokio::sync::OwnedMutexGuard<mpsc::Receiver<OutputChunk>>,
) -> impl Stream<Item = Result<OutputChunk, Status>> + Send + 'static {
    AttachStream(rx)
}

struct AttachStream(tokio::sync::OwnedMutexGuard<mpsc::Receiver<OutputChunk>>);

impl Stream for AttachStream {
    type Item = Result<OutputChunk, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}
