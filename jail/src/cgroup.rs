//! The pod's cgroup: created, limited (`memory.max`, `pids.max`) and joined by the jailed process
//! before it allocates anything, so the guest's RAM is charged to the pod. cgroup v2 is the
//! target; v1 (per-controller hierarchies, as on hybrid hosts) is handled the same way, one
//! directory per controller.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::JailError;
use crate::spec::{CgroupSpec, CgroupVersion};

/// The controllers a pod's cgroup limits.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Which hierarchy `spec` uses: as given, else v2 if `<root>` is a unified hierarchy, else v1
/// if it has `memory` and `pids` hierarchies.
pub fn version(spec: &CgroupSpec) -> Result<CgroupVersion, JailError> {
    if let Some(v) = spec.version {
        return Ok(v);
    }
    if spec.root.join("cgroup.controllers").exists() {
        return Ok(CgroupVersion::V2);
    }
    if CONTROLLERS
        .iter()
        .all(|c| spec.root.join(c).join("cgroup.procs").exists())
    {
        return Ok(CgroupVersion::V1);
    }
    Err(JailError::NoCgroupFs(spec.root.clone()))
}

/// The pod's cgroup directories: one for v2, one per controller for v1.
pub fn dirs(spec: &CgroupSpec) -> Result<Vec<PathBuf>, JailError> {
    Ok(match version(spec)? {
        CgroupVersion::V2 => vec![spec.root.join(&spec.parent).join(&spec.name)],
        CgroupVersion::V1 => CONTROLLERS
            .iter()
            .map(|c| spec.root.join(c).join(&spec.parent).join(&spec.name))
            .collect(),
    })
}

/// The pod's cgroup, created and limited, not joined yet.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Its directories (one for v2, one per controller for v1).
    dirs: Vec<PathBuf>,
    /// v2: the directory, open, for `clone3(CLONE_INTO_CGROUP)`.
    pub v2_dir: Option<File>,
}

/// Creates the cgroup and sets its limits (by the parent, before the fork).
pub(crate) fn prepare(spec: &CgroupSpec) -> Result<Prepared, JailError> {
    let limit = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |n| n.to_string());
    match version(spec)? {
        CgroupVersion::V2 => {
            let wanted: Vec<&'static str> = [(spec.memory_max, "memory"), (spec.pids_max, "pids")]
                .into_iter()
                .filter_map(|(v, c)| v.map(|_| c))
                .collect();
            enable_controllers(&spec.root, &spec.parent, &wanted)?;
            let dir = spec.root.join(&spec.parent).join(&spec.name);
            mkdir(&dir)?;
            if spec.memory_max.is_some() {
                write(&dir.join("memory.max"), &limit(spec.memory_max))?;
            }
            if spec.pids_max.is_some() {
                write(&dir.join("pids.max"), &limit(spec.pids_max))?;
            }
            let fd = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&dir)
                .map_err(|source| JailError::Cgroup {
                    step: "open",
                    path: dir.clone(),
                    source,
                })?;
            Ok(Prepared {
                dirs: vec![dir],
                v2_dir: Some(fd),
            })
        }
        CgroupVersion::V1 => {
            let mut dirs = Vec::new();
            for c in CONTROLLERS {
                let dir = spec.root.join(c).join(&spec.parent).join(&spec.name);
                mkdir(&dir)?;
                let (file, value) = match c {
                    // v1 has no "max" for memory: -1 is unlimited.
                    "memory" => (
                        "memory.limit_in_bytes",
                        spec.memory_max.map_or("-1".into(), |n| n.to_string()),
                    ),
                    _ => ("pids.max", limit(spec.pids_max)),
                };
                write(&dir.join(file), &value)?;
                dirs.push(dir);
            }
            Ok(Prepared { dirs, v2_dir: None })
        }
    }
}

/// Changes the memory limit of the pod's cgroup (a VM that grows; see `vpod_vmm`'s virtio-mem).
pub fn set_memory_max(spec: &CgroupSpec, bytes: u64) -> Result<(), JailError> {
    match version(spec)? {
        CgroupVersion::V2 => write(
            &spec
                .root
                .join(&spec.parent)
                .join(&spec.name)
                .join("memory.max"),
            &bytes.to_string(),
        ),
        CgroupVersion::V1 => write(
            &spec
                .root
                .join("memory")
                .join(&spec.parent)
                .join(&spec.name)
                .join("memory.limit_in_bytes"),
            &bytes.to_string(),
        ),
    }
}

impl Prepared {
    /// Moves the calling process in (when it wasn't born there). A migration waits for an RCU
    /// grace period in the kernel (10-20 ms measured), which `CLONE_INTO_CGROUP` avoids.
    pub(crate) fn join_self(&self) -> Result<(), JailError> {
        for dir in &self.dirs {
            // "0" is the writer itself, whatever PID namespace it is in.
            write(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }
}

/// v2: every cgroup from the root down to `parent` must delegate the `wanted` controllers to its
/// children (`cgroup.subtree_control`); missing ones are enabled where the kernel allows it.
fn enable_controllers(
    root: &Path,
    parent: &Path,
    wanted: &[&'static str],
) -> Result<(), JailError> {
    let mut dir = root.to_path_buf();
    let mut chain = vec![dir.clone()];
    for c in parent.components() {
        dir.push(c);
        chain.push(dir.clone());
    }
    for (i, dir) in chain.iter().enumerate() {
        if i > 0 {
            mkdir(dir)?;
        }
        let enabled = read(&dir.join("cgroup.subtree_control"))?;
        for &c in wanted {
            if enabled.split_whitespace().any(|e| e == c) {
                continue;
            }
            let available = read(&dir.join("cgroup.controllers"))?;
            if !available.split_whitespace().any(|a| a == c) {
                return Err(JailError::MissingController {
                    controller: c,
                    path: dir.clone(),
                });
            }
            write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Removes the pod's cgroup directories. Processes still in them (a VMM that is exiting, or one
/// left behind) are killed first; a missing directory is not an error.
pub(crate) fn remove(spec: &CgroupSpec) -> Result<(), JailError> {
    for dir in dirs(spec)? {
        remove_dir(&dir)?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), JailError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(dir);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(JailError::Cleanup {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// SIGKILL to whatever is left in `dir` (v2 `cgroup.kill` where the kernel has it).
fn kill_members(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs
        .lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill takes plain integers; a pid that already went away gives ESRCH.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn mkdir(dir: &Path) -> Result<(), JailError> {
    fs::create_dir_all(dir).map_err(|source| JailError::Cgroup {
        step: "mkdir",
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, JailError> {
    fs::read_to_string(path).map_err(|source| JailError::Cgroup {
        step: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value).map_err(|source| JailError::Cgroup {
        step: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &Path, version: Option<CgroupVersion>) -> CgroupSpec {
        CgroupSpec {
            root: root.into(),
            parent: "vpod/pods".into(),
            name: "p1".into(),
            memory_max: Some(1 << 30),
            pids_max: Some(64),
            version,
        }
    }

    #[test]
    fn version_and_dirs_follow_the_hierarchy() {
        let base = std::env::temp_dir().join(format!("vpod-jail-cg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        assert!(matches!(
            version(&spec(&base, None)),
            Err(JailError::NoCgroupFs(_))
        ));
        for c in CONTROLLERS {
            fs::create_dir_all(base.join(c)).unwrap();
            fs::write(base.join(c).join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(version(&spec(&base, None)).unwrap(), CgroupVersion::V1);
        assert_eq!(
            dirs(&spec(&base, None)).unwrap(),
            vec![
                base.join("memory/vpod/pods/p1"),
                base.join("pids/vpod/pods/p1")
            ]
        );
        fs::write(base.join("cgroup.controllers"), "memory pids").unwrap();
        assert_eq!(
            dirs(&spec(&base, None)).unwrap(),
            vec![base.join("vpod/pods/p1")]
        );
        assert_eq!(
            version(&spec(&base, Some(CgroupVersion::V1))).unwrap(),
            CgroupVersion::V1
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_memory_limit_changes_in_either_hierarchy() {
        let base = std::env::temp_dir().join(format!("vpod-jail-cg3-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("memory/vpod/pods/p1")).unwrap();
        fs::create_dir_all(base.join("vpod/pods/p1")).unwrap();
        set_memory_max(&spec(&base, Some(CgroupVersion::V1)), 5 << 20).unwrap();
        let v1 = base.join("memory/vpod/pods/p1/memory.limit_in_bytes");
        assert_eq!(fs::read_to_string(v1).unwrap(), (5u64 << 20).to_string());
        set_memory_max(&spec(&base, Some(CgroupVersion::V2)), 7 << 20).unwrap();
        let v2 = base.join("vpod/pods/p1/memory.max");
        assert_eq!(fs::read_to_string(v2).unwrap(), (7u64 << 20).to_string());
        fs::remove_dir_all(&base).unwrap();
        assert!(set_memory_max(&spec(&base, Some(CgroupVersion::V2)), 1).is_err());
    }

    #[test]
    fn v2_names_a_missing_controller() {
        // A plain directory tree standing in for a v2 hierarchy that has only `pids`.
        let base = std::env::temp_dir().join(format!("vpod-jail-cg2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join("cgroup.controllers"), "cpu pids\n").unwrap();
        fs::write(base.join("cgroup.subtree_control"), "pids\n").unwrap();
        enable_controllers(&base, Path::new(""), &["pids"]).unwrap();
        let err = enable_controllers(&base, Path::new(""), &CONTROLLERS).unwrap_err();
        let named = matches!(&err, JailError::MissingController { controller: "memory", path }
            if *path == base);
        assert!(named, "{err}");
        fs::remove_dir_all(&base).unwrap();
    }
}
