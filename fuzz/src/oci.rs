//! `oci`: arbitrary bytes as a container's OCI runtime spec (JSON) → the sandbox's policy check
//! and its translation into the agent's CreateContainerRequest, against a small kubelet and
//! containerd tree on disk (pod `uid1`, sandbox `sid1`, and another pod and sandbox) so that
//! volume classification and the runtime files' reads are reached too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::Spec;
use vpod_sandbox::mounts::MountClassifier;
use vpod_sandbox::oci::container_plan;

/// Fixed, so that seeds can name paths under it.
pub const ROOT: &str = "/tmp/vpod-fuzz-oci";

fn tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = PathBuf::from(ROOT);
        for uid in ["uid1", "uid2"] {
            let pod = root.join("kubelet/pods").join(uid);
            for v in [
                "kubernetes.io~secret/token",
                "kubernetes.io~projected/kube-api-access",
                "kubernetes.io~configmap/cfg",
                "kubernetes.io~empty-dir/cache",
            ] {
                let d = pod.join("volumes").join(v);
                std::fs::create_dir_all(&d).expect("oci fuzz tree");
                let _ = std::fs::write(d.join("key"), "value\n");
            }
            let _ = std::fs::write(pod.join("etc-hosts"), "127.0.0.1 localhost\n");
            let _ = std::fs::create_dir_all(pod.join("containers/app"));
            let _ = std::fs::write(pod.join("containers/app/0a1b2c3d"), "");
        }
        for sid in ["sid1", "sid2"] {
            let sb = root
                .join("containerd/io.containerd.grpc.v1.cri/sandboxes")
                .join(sid);
            let _ = std::fs::create_dir_all(&sb);
            for f in ["hosts", "hostname", "resolv.conf"] {
                let _ = std::fs::write(sb.join(f), sid);
            }
        }
        root
    })
}

pub fn run(data: &[u8]) {
    let root = tree();
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let classifier = MountClassifier::new(root.join("kubelet"))
        .with_containerd_dirs([root.join("containerd")])
        .for_spec(&spec);
    let _ = container_plan("app", &spec, "vpod-disk-1", &classifier);
}
