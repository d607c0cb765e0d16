//! Every container operation on [`Pod`] itself: each is its [`super::PodAgent`]'s (see there).

use std::future::Future;
use std::time::Duration;

use oci_spec::runtime::Spec;
use vpod_agent_api::pb::{
    ContainerInfo, ContainerStatsResponse, CreateContainerRequest, ExitStatus, Limits, Process,
    PutVolumeRequest,
};

use super::agent::CreateOptions;
use super::error::PodError;
use super::exec::Exec;
use super::stdio::{Output, Stdin};
use super::Pod;
use crate::mounts::MountClassifier;
use crate::volumes::{HostVolume, VolumeTarget};

impl Pod {
    /// Creates a container from an agent request ([`super::PodAgent::create_container`]).
    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<(), PodError> {
        self.agent.create_container(req).await
    }

    /// Creates a container from its OCI spec ([`super::PodAgent::create_container_with`]), the
    /// pod's sysctls under the options' own.
    pub async fn create_container_with(
        &self,
        id: &str,
        spec: &Spec,
        image_serial: &str,
        classifier: &MountClassifier,
        mut opts: CreateOptions,
    ) -> Result<Vec<(HostVolume, u64)>, PodError> {
        // The limit as given (a tiny one is the container's own business, as under runc).
        let limit = crate::sizing::memory_limit(spec);
        if let Err(e) = self.reserve_memory(id, limit).await {
            self.release_memory(id);
            return Err(e);
        }
        for (k, v) in &self.sysctls {
            opts.pod_sysctls
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        let created = self
            .agent
            .create_container_with(id, spec, image_serial, classifier, opts)
            .await;
        if created.is_err() {
            self.release_memory(id);
        }
        created
    }

    /// Starts a container ([`super::PodAgent::start_container`]).
    pub async fn start_container(&self, id: &str) -> Result<u32, PodError> {
        self.agent.start_container(id).await
    }

    /// Waits for a container's end ([`super::PodAgent::wait_container`]).
    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus, PodError> {
        self.agent.wait_container(id).await
    }

    /// Stops a container ([`super::PodAgent::stop_container`]).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitStatus, PodError> {
        self.agent.stop_container(id, grace).await
    }

    /// Signals a container ([`super::PodAgent::kill_container`]).
    pub async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), PodError> {
        self.agent.kill_container(id, signal, all).await
    }

    /// Removes a container ([`super::PodAgent::remove_container`]).
    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        self.agent.remove_container(id).await?;
        self.release_memory(id);
        Ok(())
    }

    /// A container's output ([`super::PodAgent::attach`]).
    pub async fn attach(&self, id: &str) -> Result<Output, PodError> {
        self.agent.attach(id).await
    }

    /// A started container's stdin ([`super::PodAgent::stdin`]).
    pub fn stdin(&self, id: &str) -> Stdin {
        self.agent.stdin(id)
    }

    /// Runs a process in a container ([`super::PodAgent::exec`]).
    pub async fn exec(&self, id: &str, process: Process) -> Result<Exec, PodError> {
        self.agent.exec(id, process).await
    }

    /// Sets a TTY container's size ([`super::PodAgent::resize_tty`]).
    pub async fn resize_tty(&self, id: &str, rows: u32, cols: u32) -> Result<(), PodError> {
        self.agent.resize_tty(id, rows, cols).await
    }

    /// A container's figures ([`super::PodAgent::container_stats`]).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, PodError> {
        self.agent.container_stats(id).await
    }

    /// New cgroup limits for a container ([`super::PodAgent::update_container`]).
    pub async fn update_container(&self, id: &str, limits: Limits) -> Result<(), PodError> {
        self.agent.update_container(id, limits).await
    }

    /// The pod's containers ([`super::PodAgent::list_containers`]).
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, PodError> {
        self.agent.list_containers().await
    }

    /// Creates or replaces a pod volume ([`super::PodAgent::put_volume`]).
    pub async fn put_volume(&self, req: PutVolumeRequest) -> Result<u64, PodError> {
        self.agent.put_volume(req).await
    }
}

/// Host volumes are pushed into the pod until its VM ends.
impl VolumeTarget for Pod {
    type Error = PodError;

    fn put_volume(
        &self,
        req: PutVolumeRequest,
    ) -> impl Future<Output = Result<u64, PodError>> + Send {
        Pod::put_volume(self, req)
    }

    fn is_gone(&self) -> bool {
        self.vm_exit().is_some()
    }
}
