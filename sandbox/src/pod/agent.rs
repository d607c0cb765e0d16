//! The pod's agent, fronted: every container operation as one method, the agent protocol's
//! rules applied here (stdin and exec streams in [`super::stdio`] and [`super::exec`], the stop
//! call's deadline), and every failure a [`PodError`] naming the pod, the container and the
//! operation. A [`super::Pod`] holds one; [`PodAgent::connect`] reaches the agent of a pod that
//! another process runs.

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::Spec;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vpod_agent_api::pb::{
    port_forward_input, ContainerInfo, ContainerRef, ContainerStatsResponse,
    CreateContainerRequest, ExitStatus, KillContainerRequest, Limits, ListContainersRequest,
    MountEphemeralRequest, PortForwardInput, PortForwardOutput, Process, PutVolumeRequest,
    ResizeTtyRequest, ShutdownKind, ShutdownRequest, StopContainerRequest, UpdateContainerRequest,
};
use vpod_agent_api::{AgentChannel, AgentClient, AGENT_VSOCK_PORT};

use super::config::EPHEMERAL_SERIAL;
use super::error::{ContainerOp, PodError};
use super::exec::{start_message, Exec, ExecControl, INPUT_DEPTH};
use super::stdio::{stdin_chunks, Output, Stdin};
use crate::mounts::MountClassifier;
use crate::net::PodNet;
use crate::volumes::{fingerprint, HostVolume};

/// Chunks of stdin buffered before the writer waits.
const STDIN_DEPTH: usize = 16;

/// What a caller says about a container beyond its OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Keep the container's stdin open for [`PodAgent::stdin`]: the caller's IO says so, an OCI
    /// spec has no word on it.
    pub stdin: bool,
    /// Privileged inside the pod's VM: all capabilities, no seccomp, no masked paths, `/sys`
    /// writable. A CRI notion (`vpod run --privileged`); an OCI spec can't say it.
    pub privileged: bool,
    /// The pod's sysctls (securityContext.sysctls: CRI puts them on the sandbox's spec, not
    /// the containers'), under the container's own.
    pub pod_sysctls: std::collections::BTreeMap<String, String>,
}

impl CreateOptions {
    /// Applies the options to a translated request.
    pub fn apply(&self, req: &mut CreateContainerRequest) {
        if let Some(p) = req.process.as_mut() {
            p.stdin = self.stdin;
        }
        req.privileged = self.privileged;
        for (k, v) in &self.pod_sysctls {
            req.sysctls.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// A client of one pod's agent (cheap to clone: clones share the connection).
#[derive(Debug, Clone)]
pub struct PodAgent {
    id: String,
    client: AgentClient<AgentChannel>,
}

impl PodAgent {
    pub(crate) fn new(id: &str, client: AgentClient<AgentChannel>) -> PodAgent {
        PodAgent {
            id: id.into(),
            client,
        }
    }

    /// Reaches the agent of pod `id`, running in another process, through its VMM's vsock
    /// socket (`vpod exec` and `vpod stop` of a detached pod).
    pub async fn connect(id: &str, vsock: &Path) -> Result<PodAgent, PodError> {
        let client = vpod_agent_api::connect(vsock, AGENT_VSOCK_PORT)
            .await
            .map_err(|source| PodError::Connect {
                id: id.into(),
                source,
            })?;
        Ok(PodAgent::new(id, client))
    }

    /// The pod's id.
    pub fn pod_id(&self) -> &str {
        &self.id
    }

    fn err(&self, op: ContainerOp, container: &str) -> impl FnOnce(tonic::Status) -> PodError {
        let (id, container) = (self.id.clone(), container.to_owned());
        move |status| PodError::Container {
            id,
            container,
            op,
            status,
        }
    }

    fn pod_err(&self, what: &str) -> impl FnOnce(tonic::Status) -> PodError {
        let (id, what) = (self.id.clone(), what.to_owned());
        move |status| PodError::Agent { id, what, status }
    }

    /// Creates a container from an agent request.
    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<(), PodError> {
        let id = req.id.clone();
        self.client
            .clone()
            .create_container(req)
            .await
            .map_err(self.err(ContainerOp::Create, &id))?;
        Ok(())
    }

    /// Creates container `id` from its OCI spec: the policy check first (nothing reaches the
    /// guest when it refuses), then its volumes pushed, then the container with `opts`. Returns
    /// the host volumes to keep watching ([`crate::volumes::watch`]).
    pub async fn create_container_with(
        &self,
        id: &str,
        spec: &Spec,
        image_serial: &str,
        classifier: &MountClassifier,
        opts: CreateOptions,
    ) -> Result<Vec<(HostVolume, u64)>, PodError> {
        let mut plan =
            crate::oci::container_plan(id, spec, image_serial, classifier).map_err(|source| {
                PodError::Oci {
                    id: self.id.clone(),
                    container: id.into(),
                    source: Box::new(source),
                }
            })?;
        for v in plan.once {
            self.put_volume(v).await?;
        }
        let mut watched = Vec::new();
        for v in plan.watched {
            let files = v.read().map_err(|source| PodError::HostVolume {
                id: self.id.clone(),
                container: id.into(),
                source,
            })?;
            let fp = fingerprint(&files);
            self.put_volume(v.request(files)).await?;
            watched.push((v, fp));
        }
        opts.apply(&mut plan.request);
        self.create_container(plan.request).await?;
        Ok(watched)
    }

    /// Starts container `id`; returns its process's pid in the guest.
    pub async fn start_container(&self, id: &str) -> Result<u32, PodError> {
        Ok(self
            .client
            .clone()
            .start_container(ContainerRef { id: id.into() })
            .await
            .map_err(self.err(ContainerOp::Start, id))?
            .into_inner()
            .pid)
    }

    /// Waits until container `id` has exited (no deadline: as long as it runs).
    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus, PodError> {
        Ok(self
            .client
            .clone()
            .wait_container(ContainerRef { id: id.into() })
            .await
            .map_err(self.err(ContainerOp::Wait, id))?
            .into_inner())
    }

    /// Stops container `id`: SIGTERM (or the image's stop signal), SIGKILL after `grace`. The
    /// call lasts the grace period, so its deadline is that plus an agent call's.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitStatus, PodError> {
        let deadline = grace + vpod_agent_api::call_timeout();
        let mut client = self.client.clone();
        let stop = client.stop_container(StopContainerRequest {
            id: id.into(),
            grace_period_ms: grace.as_millis().min(u32::MAX as u128) as u32,
            signal: 0,
        });
        let answer = tokio::time::timeout(deadline, stop)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "the agent did not answer within {deadline:?}"
                )))
            });
        Ok(answer
            .map_err(self.err(ContainerOp::Stop, id))?
            .into_inner())
    }

    /// Sends `signal` to container `id`'s process (`all`: to every process in it).
    pub async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), PodError> {
        self.client
            .clone()
            .kill_container(KillContainerRequest {
                id: id.into(),
                signal,
                all,
            })
            .await
            .map_err(self.err(ContainerOp::Kill, id))?;
        Ok(())
    }

    /// Removes container `id`: kills what is left, unmounts its rootfs, removes its cgroup.
    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        self.client
            .clone()
            .remove_container(ContainerRef { id: id.into() })
            .await
            .map_err(self.err(ContainerOp::Remove, id))?;
        Ok(())
    }

    /// Container `id`'s output from its first byte not yet delivered, until it exits and its
    /// pipes are drained (one attacher at a time; attach before the start to miss nothing).
    pub async fn attach(&self, id: &str) -> Result<Output, PodError> {
        let chunks = self
            .client
            .clone()
            .attach(ContainerRef { id: id.into() })
            .await
            .map_err(self.err(ContainerOp::Attach, id))?
            .into_inner();
        Ok(Output::attach(&self.id, id, chunks))
    }

    /// Container `id`'s stdin: call it once the container is started (the guest opens its
    /// stdin then); the container must be created with [`CreateOptions::stdin`].
    pub fn stdin(&self, id: &str) -> Stdin {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STDIN_DEPTH);
        let chunks = stdin_chunks(id.into(), ReceiverStream::new(rx));
        let mut client = self.client.clone();
        let err = self.err(ContainerOp::WriteStdin, id);
        let call = tokio::spawn(async move {
            match client.write_stdin(chunks).await {
                Ok(r) => Ok(r.into_inner().bytes_written),
                Err(status) => Err(err(status)),
            }
        });
        Stdin::container(&self.id, id, tx, Some(call))
    }

    /// Runs `process` in container `id`'s namespaces and cgroup.
    pub async fn exec(&self, id: &str, process: Process) -> Result<Exec, PodError> {
        let (tx, rx) = mpsc::channel(INPUT_DEPTH);
        // The channel is new and has room: the start goes first.
        let _ = tx.try_send(start_message(id, process));
        let out = self
            .client
            .clone()
            .exec(ReceiverStream::new(rx))
            .await
            .map_err(self.err(ContainerOp::Exec, id))?
            .into_inner();
        Ok(Exec::new(
            ExecControl::new(&self.id, id, tx),
            Output::exec(&self.id, id, out),
        ))
    }

    /// Opens a connection to the guest's own `127.0.0.1:port` (the pod's localhost): the input's
    /// sender (the port already sent) and the connection's output. A port nothing listens on
    /// fails here. [`crate::portforward::forward`] copies a host connection through it.
    pub async fn port_forward(
        &self,
        port: u16,
    ) -> Result<
        (
            mpsc::Sender<PortForwardInput>,
            tonic::Streaming<PortForwardOutput>,
        ),
        PodError,
    > {
        let (tx, rx) = mpsc::channel(INPUT_DEPTH);
        // The channel is new and has room: the port goes first.
        let _ = tx.try_send(PortForwardInput {
            input: Some(port_forward_input::Input::Port(port.into())),
        });
        let out = self
            .client
            .clone()
            .port_forward(ReceiverStream::new(rx))
            .await
            .map_err(self.pod_err(&format!("port-forward to 127.0.0.1:{port}")))?
            .into_inner();
        Ok((tx, out))
    }

    /// Sets TTY container `id`'s window size.
    pub async fn resize_tty(&self, id: &str, rows: u32, cols: u32) -> Result<(), PodError> {
        self.client
            .clone()
            .resize_tty(ResizeTtyRequest {
                id: id.into(),
                rows,
                cols,
            })
            .await
            .map_err(self.err(ContainerOp::ResizeTty, id))?;
        Ok(())
    }

    /// Container `id`'s CPU, memory and pids figures (its guest cgroup's).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, PodError> {
        Ok(self
            .client
            .clone()
            .container_stats(ContainerRef { id: id.into() })
            .await
            .map_err(self.err(ContainerOp::Stats, id))?
            .into_inner())
    }

    /// Replaces container `id`'s cgroup limits (all of them: a zero is "none").
    pub async fn update_container(&self, id: &str, limits: Limits) -> Result<(), PodError> {
        self.client
            .clone()
            .update_container(UpdateContainerRequest {
                id: id.into(),
                limits: Some(limits),
            })
            .await
            .map_err(self.err(ContainerOp::Update, id))?;
        Ok(())
    }

    /// The pod's containers as the guest knows them.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, PodError> {
        Ok(self
            .client
            .clone()
            .list_containers(ListContainersRequest {})
            .await
            .map_err(self.pod_err("list containers"))?
            .into_inner()
            .containers)
    }

    /// Creates or replaces a pod volume; returns its generation.
    pub async fn put_volume(&self, req: PutVolumeRequest) -> Result<u64, PodError> {
        let name = req.name.clone();
        Ok(self
            .client
            .clone()
            .put_volume(req)
            .await
            .map_err(self.pod_err(&format!("put volume {name}")))?
            .into_inner()
            .generation)
    }

    /// Mounts the pod's ephemeral disk in the guest (once, at boot).
    pub(crate) async fn mount_ephemeral(&self) -> Result<(), PodError> {
        self.client
            .clone()
            .mount_ephemeral(MountEphemeralRequest {
                disk: EPHEMERAL_SERIAL.into(),
            })
            .await
            .map_err(self.pod_err("mount the ephemeral disk"))?;
        Ok(())
    }

    /// Gives the guest its network as CNI made it (at boot).
    pub(crate) async fn configure_network(&self, net: &PodNet) -> Result<(), PodError> {
        self.client
            .clone()
            .configure_network(crate::net::guest_request(net))
            .await
            .map_err(self.pod_err("configure the guest's network"))?;
        Ok(())
    }

    /// Asks the guest to power off, waiting at most `timeout` for its answer.
    pub(crate) async fn power_off(&self, timeout: Duration) {
        let mut client = self.client.clone();
        let req = ShutdownRequest {
            kind: ShutdownKind::Poweroff as i32,
        };
        let _ = tokio::time::timeout(timeout, client.shutdown(req)).await;
    }
}
