//! A CRI pod's limits from the pod-level cgroup kubelet makes before RunPodSandbox: its
//! `memory.max` is the sum of the containers' memory limits plus the RuntimeClass overhead (set
//! only when every container has one), its `cpu.max` their CPU limits. containerd puts the pod's
//! cgroup in the sandbox spec's `linux.cgroupsPath`, as a path (`/kubepods/burstable/pod<uid>/<id>`,
//! cgroupfs driver) or a systemd triple (`kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`);
//! the pod's cgroup is that path's parent. Only cgroup v2 files are read, and only below the
//! cgroup mount.

use std::path::{Component, Path, PathBuf};

use super::Limits;

impl Limits {
    /// The limits of the pod whose sandbox has `cgroups_path`, read under `cgroup_root` (the v2
    /// mount, `/sys/fs/cgroup`); `None` when the pod's cgroup or its limits can't be read.
    pub fn from_pod_cgroup(cgroups_path: &str, cgroup_root: &Path) -> Option<Limits> {
        let dir = cgroup_root.join(pod_cgroup(cgroups_path)?);
        let memory_bytes = std::fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|b| *b > 0);
        let cpus = std::fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace();
                let quota: u64 = it.next()?.parse().ok()?;
                let period: u64 = it.next()?.parse().ok().filter(|p| *p > 0)?;
                Some(quota as f64 / period as f64)
            })
            .filter(|c| *c > 0.0);
        (memory_bytes.is_some() || cpus.is_some()).then_some(Limits { memory_bytes, cpus })
    }
}

/// The pod's cgroup (relative to the mount) of a sandbox's `cgroupsPath`.
fn pod_cgroup(cgroups_path: &str) -> Option<PathBuf> {
    let rel = if cgroups_path.starts_with('/') {
        Path::new(cgroups_path)
            .parent()?
            .strip_prefix("/")
            .ok()?
            .to_owned()
    } else {
        // systemd: "<slice>:<prefix>:<name>"; the slice `a-b-c.slice` lives at
        // `a.slice/a-b.slice/a-b-c.slice`.
        let slice = cgroups_path.split(':').next()?;
        let stem = slice.strip_suffix(".slice")?;
        let mut path = PathBuf::new();
        let mut prefix = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return None;
            }
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            path.push(format!("{prefix}.slice"));
        }
        path
    };
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.components().next().is_some()).then_some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_cgroup_is_the_sandbox_paths_parent() {
        assert_eq!(
            pod_cgroup("/kubepods/burstable/pod1234/abcd"),
            Some("kubepods/burstable/pod1234".into())
        );
        assert_eq!(
            pod_cgroup("kubepods-burstable-pod1234.slice:cri-containerd:abcd"),
            Some("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice".into())
        );
        for bad in [
            "/abcd",
            "/../etc/x",
            "/a/../b/c",
            "",
            "x--y.slice:a:b",
            "noslice:a:b",
        ] {
            assert_eq!(pod_cgroup(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_are_read_from_memory_max_and_cpu_max() {
        let root = std::env::temp_dir().join(format!("vpod-podcg-{}", std::process::id()));
        let pod = root.join("kubepods/pod1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("memory.max"), "1073741824\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "200000 100000\n").unwrap();
        let l = Limits::from_pod_cgroup("/kubepods/pod1/sandbox", &root).unwrap();
        assert_eq!(l.memory_bytes, Some(1 << 30));
        assert_eq!(l.cpus, Some(2.0));
        std::fs::write(pod.join("memory.max"), "max\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(
            Limits::from_pod_cgroup("/kubepods/pod1/sandbox", &root),
            None
        );
        assert_eq!(
            Limits::from_pod_cgroup("/kubepods/none/sandbox", &root),
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
