//! CreateContainer: check the request, mount the rootfs overlay and the
//! container's devpts, make the cgroup, record the container.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::sync::{mpsc, watch};
use vpod_agent_api::pb::{CreateContainerRequest, MountKind};

use super::cgroup::Cgroup;
use super::containers::{pts_dir, valid_id, Container, Containers, ROOTFS_ROOT};
use super::error::ContainerError;
use super::init::config::BindMount;
use super::init::known_rlimit;
use super::remove::teardown;
use super::state::State;

/// Output chunks buffered before the container's writes block (a pipe's
/// worth of back pressure when nobody is attached).
const OUTPUT_BUFFER: usize = 64;

impl Containers {
    /// Mounts the rootfs, makes the cgroup, records the container.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateContainerRequest,
    ) -> Result<(), ContainerError> {
        let id = req.id.clone();
        if !valid_id(&id) {
            return Err(ContainerError::BadId(id));
        }
        let invalid = |msg: String| ContainerError::Invalid {
            id: id.clone(),
            msg,
        };
        let process = req
            .process
            .as_ref()
            .ok_or_else(|| invalid("no process".into()))?;
        if process.args.is_empty() {
            return Err(invalid("no command: process.args is empty".into()));
        }
        if let Some(r) = process.rlimits.iter().find(|r| !known_rlimit(&r.kind)) {
            return Err(invalid(format!("unknown rlimit {:?}", r.kind)));
        }
        if let Some((k, v)) = req
            .sysctls
            .iter()
            .find(|(k, v)| !vpod_agent_api::sysctl::namespaced(k, v))
        {
            return Err(invalid(vpod_agent_api::sysctl::refusal(k, v)));
        }
        if req.image_disk.is_empty() {
            return Err(invalid("no image_disk".into()));
        }
        // Compiled once here, so a profile the guest can't enforce fails the create.
        let seccomp = super::seccomp::for_process(process, req.privileged)
            .map_err(|e| invalid(e.to_string()))?;
        if self.contains(&id) {
            return Err(ContainerError::Exists(id));
        }
        let eph = self
            .disks
            .ephemeral()
            .map_err(|source| ContainerError::Disk {
                id: id.clone(),
                source,
            })?;
        let mounts = self.bind_mounts(&req, &eph)?;

        // Mounting may wait for a late disk to appear: off the runtime.
        let this = self.clone();
        let req2 = req.clone();
        let eph2 = eph.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&req2, &eph2))
            .await
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: "prepare".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let (rootfs, layer, cgroup) = prepared;

        let (exit, _) = watch::channel(None);
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        let c = Arc::new(Container {
            id: id.clone(),
            req,
            rootfs,
            layer,
            mounts,
            cgroup,
            state: Mutex::new(State::Created),
            exit,
            output: Arc::new(tokio::sync::Mutex::new(rx)),
            output_tx: Mutex::new(Some(tx)),
            stdin: tokio::sync::Mutex::new(None),
            pty: Mutex::new(None),
            held_signals: Mutex::new(0),
            seccomp,
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&id) {
            drop(map);
            teardown(&self.disks, &c, &self.log);
            return Err(ContainerError::Exists(id));
        }
        map.insert(id.clone(), c);
        self.log.info(format!("container {id} created"));
        Ok(())
    }

    /// The request's mounts with their guest sources (a volume, a
    /// directory on the ephemeral disk `eph`, or a fresh tmpfs).
    fn bind_mounts(
        &self,
        req: &CreateContainerRequest,
        eph: &Path,
    ) -> Result<Vec<BindMount>, ContainerError> {
        let id = &req.id;
        let invalid = |msg: String| ContainerError::Invalid {
            id: id.clone(),
            msg,
        };
        let mut mounts = Vec::new();
        for m in &req.mounts {
            if !m.destination.starts_with('/') {
                return Err(invalid(format!(
                    "mount destination {:?} is not absolute",
                    m.destination
                )));
            }
            let source = match m.kind() {
                MountKind::Volume => Some(self.volumes.source(&m.source, &m.sub_path).map_err(
                    |source| ContainerError::Volume {
                        id: id.clone(),
                        source,
                    },
                )?),
                MountKind::Tmpfs => None,
                MountKind::EphemeralDir => {
                    let rel = Path::new(&m.source);
                    if m.source.is_empty()
                        || !rel
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(invalid(format!(
                            "ephemeral dir {:?} must be a relative path without '..'",
                            m.source
                        )));
                    }
                    let dir = eph.join("dirs").join(rel);
                    std::fs::create_dir_all(&dir).map_err(|source| ContainerError::Io {
                        id: id.clone(),
                        op: format!("mkdir {}", dir.display()),
                        source,
                    })?;
                    Some(dir)
                }
                MountKind::Unspecified => {
                    return Err(invalid(format!("mount {}: no kind", m.destination)))
                }
            };
            mounts.push(BindMount {
                source,
                destination: m.destination.clone(),
                read_only: m.read_only,
                tmpfs_size_bytes: m.tmpfs_size_bytes,
            });
        }
        Ok(mounts)
    }

    /// Image mount, overlay, cgroup; undone on failure.
    fn prepare(
        &self,
        req: &CreateContainerRequest,
        eph: &Path,
    ) -> Result<(PathBuf, PathBuf, Cgroup), ContainerError> {
        let id = &req.id;
        let io = |op: String| {
            move |source| ContainerError::Io {
                id: id.clone(),
                op,
                source,
            }
        };
        let image = self
            .disks
            .acquire_image(&req.image_disk)
            .map_err(|source| ContainerError::Disk {
                id: id.clone(),
                source,
            })?;
        let layer = eph.join("containers").join(id);
        let rootfs = Path::new(ROOTFS_ROOT).join(id).join("rootfs");
        let undo = |layer: &Path, rootfs: &Path| {
            let _ = umount2(&pts_dir(rootfs), MntFlags::MNT_DETACH);
            let _ = umount2(rootfs, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(layer);
            let _ = std::fs::remove_dir_all(rootfs.parent().unwrap_or(rootfs));
            self.disks.release_image(&req.image_disk);
        };
        let result = (|| {
            let _ = std::fs::remove_dir_all(&layer);
            for d in [layer.join("upper"), layer.join("work"), rootfs.clone()] {
                std::fs::create_dir_all(&d).map_err(io(format!("mkdir {}", d.display())))?;
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                layer.join("upper").display(),
                layer.join("work").display()
            );
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: format!("mount the overlay rootfs ({opts})"),
                source: e.into(),
            })?;
            let pts = pts_dir(&rootfs);
            std::fs::create_dir_all(&pts).map_err(io(format!("mkdir {}", pts.display())))?;
            mount(
                Some("devpts"),
                &pts,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            )
            .map_err(|e| ContainerError::Io {
                id: id.clone(),
                op: "mount the container's devpts".into(),
                source: e.into(),
            })?;
            let limits = req.limits.unwrap_or_default();
            let cg = Cgroup::create(&self.cgroup_parent, id, &limits)
                .map_err(io("create the cgroup".into()))?;
            Ok(cg)
        })();
        match result {
            Ok(cg) => Ok((rootfs, layer, cg)),
            Err(e) => {
                undo(&layer, &rootfs);
                Err(e)
            }
        }
    }
}
