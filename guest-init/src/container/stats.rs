//! ContainerStats and UpdateContainer: reading and rewriting the
//! container's cgroup.

use std::path::Path;

use vpod_agent_api::pb::{ContainerStatsResponse, Limits};

use super::containers::Containers;
use super::error::ContainerError;
use crate::clock::boottime_ns;

impl Containers {
    /// CPU, memory, pids and writable-layer usage now.
    pub fn stats(&self, id: &str) -> Result<ContainerStatsResponse, ContainerError> {
        let c = self.get(id)?;
        Ok(ContainerStatsResponse {
            cpu_usage_ns: c.cgroup.cpu_usage_ns(),
            memory_bytes: c.cgroup.memory_bytes(),
            memory_peak_bytes: c.cgroup.memory_peak_bytes(),
            writable_layer_bytes: dir_bytes(&c.layer.join("upper")),
            timestamp_boottime_ns: boottime_ns(),
            pids: c.cgroup.pids().len() as u32,
        })
    }

    /// Replaces the container's cgroup limits (kubelet's in-place resize).
    pub fn update(&self, id: &str, limits: &Limits) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        c.cgroup
            .apply(limits, true)
            .map_err(c.io("update the cgroup limits"))
    }
}

/// Bytes in files under `dir` (the writable layer's usage).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(md) if md.is_dir() => stack.push(e.path()),
                Ok(md) => total += md.len(),
                Err(_) => {}
            }
        }
    }
    total
}
