//! Task stats: the guest's cgroup v2 figures of a container, in the cgroup
//! v1 `Metrics` shape containerd (and kubelet through it) decodes.

use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use vpod_agent_api::pb::ContainerStatsResponse;

use crate::error::{Error, Result};

/// `s` as containerd's metrics.
fn metrics(s: &ContainerStatsResponse) -> Metrics {
    Metrics {
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: s.cpu_usage_ns,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            usage: Some(MemoryEntry {
                usage: s.memory_bytes,
                max: s.memory_peak_bytes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStat {
            current: s.pids as u64,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The Stats answer for a container whose guest figures are `s`.
pub fn response(s: &ContainerStatsResponse) -> Result<api::StatsResponse> {
    let any = containerd_shim::util::convert_to_any(Box::new(metrics(s))).map_err(Error::Stats)?;
    Ok(api::StatsResponse {
        stats: Some(any).into(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn guest_figures_become_cgroup_v1_metrics() {
        let s = ContainerStatsResponse {
            cpu_usage_ns: 1_500,
            memory_bytes: 4 << 20,
            memory_peak_bytes: 6 << 20,
            pids: 3,
            ..Default::default()
        };
        let r = response(&s).unwrap();
        let any = r.stats.into_option().unwrap();
        assert!(
            any.type_url.ends_with("io.containerd.cgroups.v1.Metrics"),
            "{}",
            any.type_url
        );
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 1_500);
        assert_eq!(m.memory.usage.usage, 4 << 20);
        assert_eq!(m.memory.usage.max, 6 << 20);
        assert_eq!(m.pids.current, 3);
    }
}
