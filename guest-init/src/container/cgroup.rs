//! A container's cgroup v2 group: limits, stats, OOM count, kill.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vpod_agent_api::pb::Limits;

/// Parent of every container's group (`setup` enables cpu, memory, pids on
/// the root; this level passes them on).
pub const CONTAINERS_CGROUP: &str = "/sys/fs/cgroup/containers";

/// One container's group, `<parent>/<id>`.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<parent>/<id>` and writes the limits.
    pub fn create(parent: &Path, id: &str, limits: &Limits) -> io::Result<Self> {
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
            // The containers' level hands the controllers on.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory +pids");
        }
        let path = parent.join(id);
        std::fs::create_dir(&path)?;
        let cg = Cgroup { path };
        if let Err(e) = cg.apply(limits, false) {
            let _ = std::fs::remove_dir(&cg.path);
            return Err(e);
        }
        Ok(cg)
    }

    /// Writes `limits`. A zero is "no limit": left alone on create, written
    /// back to the kernel's default on an update (which carries all of them).
    pub fn apply(&self, limits: &Limits, update: bool) -> io::Result<()> {
        let write = |file: &str, value: String| -> io::Result<()> {
            std::fs::write(self.path.join(file), &value)
                .map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {file}: {e}")))
        };
        if limits.memory_bytes > 0 {
            write("memory.max", limits.memory_bytes.to_string())?;
            // No swap in the guest anyway; keep the semantics explicit.
            let _ = write("memory.swap.max", "0".into());
        } else if update {
            write("memory.max", "max".into())?;
        }
        let period = if limits.cpu_period_us > 0 {
            limits.cpu_period_us
        } else {
            100_000
        };
        if limits.cpu_quota_us > 0 {
            write("cpu.max", format!("{} {period}", limits.cpu_quota_us))?;
        } else if update {
            write("cpu.max", format!("max {period}"))?;
        }
        if limits.cpu_weight > 0 {
            write("cpu.weight", limits.cpu_weight.to_string())?;
        } else if update {
            write("cpu.weight", "100".into())?;
        }
        if limits.pids > 0 {
            write("pids.max", limits.pids.to_string())?;
        } else if update {
            write("pids.max", "max".into())?;
        }
        Ok(())
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs`: writing a pid moves it into the group.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// How many times the OOM killer acted in this group.
    pub fn oom_kills(&self) -> u64 {
        read_keyed(&self.path.join("memory.events"), "oom_kill").unwrap_or(0)
    }

    /// SIGKILL to every process in the group (cgroup.kill, Linux 5.14+).
    pub fn kill_all(&self) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.kill"), "1")
    }

    /// Pids in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// CPU time used by the group (`cpu.stat` usage_usec).
    pub fn cpu_usage_ns(&self) -> u64 {
        read_keyed(&self.path.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000
    }

    /// Memory charged to the group now (`memory.current`).
    pub fn memory_bytes(&self) -> u64 {
        read_u64(&self.path.join("memory.current")).unwrap_or(0)
    }

    /// The most memory the group ever had charged (`memory.peak`).
    pub fn memory_peak_bytes(&self) -> u64 {
        read_u64(&self.path.join("memory.peak")).unwrap_or(0)
    }

    /// Kills what is left and removes the group, waiting a little for the
    /// kernel to let the last processes go.
    pub fn destroy(&self) -> io::Result<()> {
        let _ = self.kill_all();
        let mut last = Ok(());
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Err(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        last
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key N` from a flat-keyed cgroup file.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_keyed_files() {
        let p = std::env::temp_dir().join(format!("vpod-cg-{}", std::process::id()));
        std::fs::write(&p, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(read_keyed(&p, "oom_kill"), Some(2));
        assert_eq!(read_keyed(&p, "oom"), Some(1));
        assert_eq!(read_keyed(&p, "nope"), None);
        std::fs::remove_file(p).unwrap();
    }
}
