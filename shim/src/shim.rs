//! The shim's lifecycle (containerd's `Shim`): start a shim per pod, clean
//! up after a dead one, and serve the Task API (`task.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error as ShimError, Flags, StartOpts};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::marker::clean_after_dead_shim;
use crate::task::TaskService;

const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// containerd's runtime `io.containerd.vpod.v2`: one shim per pod.
#[derive(Clone)]
pub struct VpodShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    /// The task's bundle (`-bundle`, else the working directory containerd
    /// starts us in): where `delete` finds the pod's
    /// [`PodMarker`](crate::marker::PodMarker). containerd names it after
    /// the task id, which is what `delete` takes the id from.
    bundle: PathBuf,
}

impl std::fmt::Debug for VpodShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpodShim")
            .field("namespace", &self.namespace)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// The bundle's OCI spec annotations that say which pod a task is in.
fn grouping(bundle: &std::path::Path, id: &str) -> String {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| s.annotations().clone())
        .and_then(|a| a.get(ANN_SANDBOX_ID).cloned())
        .unwrap_or_else(|| id.to_owned())
}

#[async_trait]
impl Shim for VpodShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        VpodShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> std::result::Result<String, ShimError> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&bundle, &opts.id);
        spawn(opts, &group, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> std::result::Result<api::DeleteResponse, ShimError> {
        // containerd calls this when the shim is gone (killed, crashed) or a
        // start failed: clean up what the dead shim left, report a killed task.
        let (bundle, namespace) = (self.bundle.clone(), self.namespace.clone());
        let done = tokio::task::spawn_blocking(move || clean_after_dead_shim(&bundle, &namespace))
            .await
            .map_err(|e| ShimError::Other(e.to_string()))?;
        log::info!("delete of {}: {done:?}", self.bundle.display());
        Ok(api::DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(Timestamp::now()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(self.exit.clone(), self.namespace.clone(), publisher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShimConfig;
    use crate::marker::{Cleanup, PodMarker, POD_MARKER};

    fn shim_for(bundle: &std::path::Path) -> VpodShim {
        VpodShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: "k8s.io".into(),
            bundle: bundle.to_path_buf(),
        }
    }

    /// A pid that no longer runs (an exited, reaped child's).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    /// Issue 12 item 11: `delete` after the shim died removes the pod's
    /// state dir, ephemeral dir and half-built rootfs disks; it touches
    /// nothing of a pod whose shim still runs.
    #[tokio::test]
    async fn delete_after_a_dead_shim_removes_its_pod_dirs() {
        let base = std::env::temp_dir().join(format!("vpod-shim-delete-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let cfg = ShimConfig {
            state_dir: base.join("state"),
            ephemeral_dir: base.join("ephemeral"),
            rootfs_cache: base.join("rootfs"),
            ..ShimConfig::default()
        };
        // containerd names a task's bundle after the task.
        let id = "0123456789abcdefABCDEF0123456789abcdef";
        let bundle = base.join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut m = PodMarker::for_pod(&cfg, "k8s.io", id);
        assert_eq!(
            (&m.state_root, &m.ephemeral_root),
            (&cfg.state_dir, &cfg.ephemeral_dir)
        );
        assert_eq!(m.shim_pid, std::process::id());
        assert!(m.shim_alive(), "{m:?}");
        assert_eq!(
            m.state_dir,
            base.join("state/k8s.io-0123456789abcdefabcdef0123456789")
        );
        // The pod's dirs as the shim makes them: 0700.
        let make = |m: &PodMarker| {
            use std::os::unix::fs::DirBuilderExt;
            for d in [&m.state_dir, &m.ephemeral_dir] {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .unwrap();
                std::fs::write(d.join("slot-0.img"), "x").unwrap();
            }
            std::fs::create_dir_all(&m.rootfs_cache).unwrap();
            std::fs::write(m.rootfs_cache.join(format!(".k.{}.tmp", m.shim_pid)), "x").unwrap();
        };

        // No marker: nothing to do, still a killed task's answer.
        let r = shim_for(&bundle).delete_shim().await.unwrap();
        assert_eq!(r.exit_status, 137);
        assert_eq!(clean_after_dead_shim(&bundle, "k8s.io"), Cleanup::NoMarker);

        // The shim runs (this process): the pod is left alone.
        make(&m);
        m.write(&bundle).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bundle.join(POD_MARKER))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        shim_for(&bundle).delete_shim().await.unwrap();
        assert!(m.state_dir.join("slot-0.img").exists());
        assert!(m.ephemeral_dir.exists());

        // The same pid, another start time: a recycled pid, not the shim.
        m.shim_start_time += 1;
        m.write(&bundle).unwrap();
        shim_for(&bundle).delete_shim().await.unwrap();
        assert!(!m.state_dir.exists() && !m.ephemeral_dir.exists());

        // A dead shim: everything of its pod goes.
        m.shim_pid = dead_pid();
        make(&m);
        m.write(&bundle).unwrap();
        shim_for(&bundle).delete_shim().await.unwrap();
        assert!(!m.state_dir.exists(), "state dir left");
        assert!(!m.ephemeral_dir.exists(), "ephemeral dir left");
        assert_eq!(std::fs::read_dir(&m.rootfs_cache).unwrap().count(), 0);
        // Again (containerd deletes each task of the pod): nothing left to do.
        assert_eq!(
            clean_after_dead_shim(&bundle, "k8s.io"),
            Cleanup::Cleaned(Vec::new())
        );

        // A marker naming a relative or `..` path removes nothing.
        let victim = base.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        m.state_dir = base.join("state/../victim");
        m.ephemeral_dir = "victim".into();
        m.write(&bundle).unwrap();
        shim_for(&bundle).delete_shim().await.unwrap();
        assert!(victim.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
