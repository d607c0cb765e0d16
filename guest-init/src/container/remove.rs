//! RemoveContainer: kill what is left, then undo what create made.

use std::time::Duration;

use nix::mount::{umount2, MntFlags};

use super::containers::{Container, Containers};
use super::error::ContainerError;
use crate::disks::Disks;
use crate::log::AgentLog;

/// How long RemoveContainer waits for a killed container to be reaped.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

impl Containers {
    /// Kills what is left and undoes `create`.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if !c.state().can_remove() {
            return Err(c.wrong_state("wait for StartContainer first"));
        }
        if c.state().pid().is_some() {
            let _ = c.cgroup.kill_all();
            if tokio::time::timeout(REMOVE_WAIT, self.wait(id))
                .await
                .is_err()
            {
                return Err(c.wrong_state("and did not die after SIGKILL"));
            }
        }
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let disks = self.disks.clone();
        let c2 = c.clone();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || teardown(&disks, &c2, &log))
            .await
            .map_err(|e| ContainerError::Io {
                id: id.to_owned(),
                op: "remove".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        self.log.info(format!("container {id} removed"));
        Ok(())
    }
}

/// Unmounts the container's devpts and rootfs, removes its directories,
/// writable layer and cgroup, releases its image disk. Problems are logged:
/// what can be undone is.
pub(super) fn teardown(disks: &Disks, c: &Container, log: &AgentLog) {
    let _ = umount2(&c.pts(), MntFlags::MNT_DETACH);
    if let Err(e) = umount2(c.rootfs.as_path(), MntFlags::MNT_DETACH) {
        log.warn(format!("container {}: unmount rootfs: {e}", c.id));
    }
    if let Some(dir) = c.rootfs.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(e) = std::fs::remove_dir_all(&c.layer) {
        log.warn(format!("container {}: remove writable layer: {e}", c.id));
    }
    if let Err(e) = c.cgroup.destroy() {
        log.warn(format!("container {}: remove cgroup: {e}", c.id));
    }
    disks.release_image(&c.req.image_disk);
}
