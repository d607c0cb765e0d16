//! vpod as a CRI runtime handler: Debian's containerd 1.6 and its CRI plugin,
//! driven by the project's CRI client the way kubelet drives it, with runc
//! beside it in the same containerd (test bed: real microVMs).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpod_test_support::containerd::{Containerd, RUNC, VPOD};
use vpod_test_support::cri::{self, v1, Cri};
use vpod_test_support::{jail, Entry};

const IMAGE: &str = "docker.io/library/vpod-busybox:1";

async fn start(name: &str) -> (Containerd, Cri) {
    cri::start_containerd(
        name,
        Path::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2")),
        IMAGE,
        vec![Entry::File(
            "etc/motd".into(),
            b"from the image\n".to_vec(),
            0o644,
        )],
        serde_json::json!({"Cmd": ["sh"]}),
    )
    .await
}

/// The pod's network namespace path, from the sandbox's verbose status.
/// The shim's pod id for a sandbox id (shim/src/pod.rs `pod_id`).
fn vpod_shim_pod_id(sandbox: &str) -> String {
    sandbox
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(32)
        .collect()
}

async fn pod_netns(client: &mut Cri, pod: &str) -> String {
    let s = client
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("no netns path in {info}"))
        .to_owned()
}

fn host_processes_with(marker: &str) -> usize {
    let o = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(marker))
        .count()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)))
        .map(str::to_owned)
        .collect()
}

/// What one run of the two-container pod showed.
#[derive(Debug)]
struct PodRun {
    app_log: BTreeSet<(String, String)>,
    sidecar_log: BTreeSet<(String, String)>,
    exec: (i32, String, String),
    exec_fail: i32,
    /// ExecSync ran in the container.
    exec_in_container: bool,
    reached_pod_ip: bool,
    /// The app's processes show up among the host's.
    visible_on_host: bool,
}

/// Runs the 2-container pod (secret + configMap volumes) on `handler`,
/// checks it, stops and removes it, and returns what it showed.
async fn run_pod(c: &Containerd, client: &mut Cri, handler: &str) -> PodRun {
    let uid = format!("0d3f6a1c-{handler:0>4}-4000-8000-000000000001");
    let logs = c.dir.join("pod-logs");
    let pod = cri::pod_config("web", &uid, &logs);
    for name in ["app", "sidecar"] {
        std::fs::create_dir_all(Path::new(&pod.log_directory).join(name)).unwrap();
    }
    let kubelet = c.kubelet_root();
    let secret = cri::kubelet_volume(
        &kubelet,
        &uid,
        "secret",
        "db-pass",
        &[("password", "s3cret-value")],
        "/etc/secret",
    );
    let config = cri::kubelet_volume(
        &kubelet,
        &uid,
        "configmap",
        "app-config",
        &[("greeting", "hello from a configMap")],
        "/etc/config",
    );
    // A process the host can look for: runc's, not vpod's.
    let marker = if handler == VPOD { "3131" } else { "3132" };
    let mut app = cri::container_config(
        "app",
        IMAGE,
        &[
            "sh",
            "-c",
            &format!(
                "echo secret=$(cat /etc/secret/password); echo config=$(cat /etc/config/greeting); \
                 echo motd=$(cat /etc/motd); echo host=$(hostname); echo oops >&2; \
                 echo written > /tmp/state; sleep {marker} & \
                 while true; do nc -l -p 8080 -e echo pod-ip-ok; done"
            ),
        ],
    );
    app.mounts = vec![secret, config];
    // kubelet's QoS score (BestEffort's) reaches the container process.
    app.linux.as_mut().unwrap().resources = Some(v1::LinuxContainerResources {
        oom_score_adj: 1000,
        ..Default::default()
    });
    let sidecar = cri::container_config(
        "sidecar",
        IMAGE,
        &[
            "sh",
            "-c",
            "until out=$(nc -w 1 127.0.0.1 8080 </dev/null) && [ -n \"$out\" ]; do sleep 0.2; done; \
             echo sidecar got $out over localhost; \
             ls /etc/secret 2>&1 | head -n 1; exec sleep 2147483647",
        ],
    );

    let pod_id = match client.run_pod(&pod, handler).await {
        Ok(id) => id,
        Err(s) => panic!("RunPodSandbox ({handler}): {s}\n{}", c.log()),
    };
    let netns = pod_netns(client, &pod_id).await;
    let mut ids = Vec::new();
    for cc in [&app, &sidecar] {
        match client.create_and_start(&pod_id, &pod, cc).await {
            Ok(id) => ids.push(id),
            Err(s) => panic!("create/start ({handler}): {s}\n{}", c.log()),
        }
    }
    let log_dir = Path::new(&pod.log_directory);
    let app_log = cri::wait_log(
        &log_dir.join("app/0.log"),
        |l| l.iter().filter(|(_, t)| !t.is_empty()).count() >= 5,
        handler,
    )
    .await;
    let sidecar_log =
        cri::wait_log(&log_dir.join("sidecar/0.log"), |l| l.len() >= 2, handler).await;

    let exec = client
        .exec_sync(
            &ids[0],
            &[
                "sh",
                "-c",
                "cat /tmp/state /etc/secret/password; echo; echo e >&2",
            ],
        )
        .await
        .unwrap_or_else(|s| panic!("ExecSync ({handler}): {s}\n{}", c.log()));
    // Where ExecSync lands: the container's own pid 1 is its command.
    let (_, pid1, _) = client
        .exec_sync(&ids[0], &["cat", "/proc/1/cmdline"])
        .await
        .unwrap();
    let exec_in_container = pid1.starts_with("sh\0-c\0echo secret=");
    let exec_fail = client
        .exec_sync(&ids[0], &["sh", "-c", "exit 7"])
        .await
        .unwrap()
        .0;

    if handler == VPOD {
        // The secret is a guest tmpfs; the tap sits in the pod's netns.
        let (code, mounts, _) = client
            .exec_sync(&ids[0], &["grep", " /etc/secret ", "/proc/mounts"])
            .await
            .unwrap();
        assert_eq!(code, 0);
        assert!(
            mounts.starts_with("tmpfs") || mounts.contains(" tmpfs "),
            "{mounts}"
        );
        let (_, adj, _) = client
            .exec_sync(&ids[0], &["cat", "/proc/1/oom_score_adj"])
            .await
            .unwrap();
        assert_eq!(adj, "1000\n", "the spec's oom_score_adj");
        // CNI's netns lives in /var/run/netns, where `ip -n` looks.
        let ns_name = netns.rsplit('/').next().unwrap();
        let tap = Command::new("ip")
            .args(["-n", ns_name, "link", "show", "vpod0"])
            .output()
            .unwrap();
        assert!(tap.status.success(), "no tap in {netns}");
        // The pod's VMM is its own jailed process, in the pod's netns, its cgroup holding the
        // guest's RAM (the shim names the pod after the first 32 characters of the sandbox id).
        let vmm = jail::vmm_of(&vpod_shim_pod_id(&pod_id));
        if let Some(cg) = jail::assert_jailed(vmm, Some(Path::new(&netns))) {
            jail::assert_cgroup_holds_guest(&cg, 64, 16);
        }
    }

    let ip = client.pod_ip(&pod_id).await.unwrap();
    assert!(
        ip.starts_with(&format!("10.89.{}.", c.subnet)),
        "pod IP {ip:?} from the CNI range"
    );
    let mut reached_pod_ip = false;
    let t0 = Instant::now();
    while !reached_pod_ip && t0.elapsed() < Duration::from_secs(30) {
        let r = Command::new("busybox")
            .args(["nc", "-w", "3", &ip, "8080"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        reached_pod_ip = String::from_utf8_lossy(&r.stdout).contains("pod-ip-ok");
        if !reached_pod_ip {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let visible_on_host = host_processes_with(&format!("sleep {marker}")) > 0;

    if handler == VPOD {
        // UpdateContainerResources reaches the container's guest cgroup: a
        // 40 MiB buffer fits before, and is OOM-killed under 24 MiB.
        let hog = [
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null; echo rc=$?",
        ];
        let before = client.exec_sync(&ids[0], &hog).await.unwrap();
        assert_eq!(before.1, "rc=0\n", "{before:?}");
        client
            .runtime
            .update_container_resources(v1::UpdateContainerResourcesRequest {
                container_id: ids[0].clone(),
                linux: Some(v1::LinuxContainerResources {
                    memory_limit_in_bytes: 24 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("UpdateContainerResources: {s}\n{}", c.log()));
        let after = client.exec_sync(&ids[0], &hog).await.unwrap();
        assert_eq!(
            after.1, "rc=137\n",
            "OOM-killed under the new limit: {after:?}"
        );
    }

    if let Err(s) = client.stop_and_remove_pod(&pod_id).await {
        panic!("stop/remove ({handler}): {s}\n{}", c.log());
    }
    let left = client
        .runtime
        .list_pod_sandbox(v1::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.iter().all(|p| p.id != pod_id), "pod still listed");
    assert!(
        !Path::new(&netns).exists(),
        "{handler}: the pod's netns {netns} outlived it"
    );
    PodRun {
        app_log: app_log.into_iter().collect(),
        sidecar_log: sidecar_log.into_iter().collect(),
        exec,
        exec_fail,
        exec_in_container,
        reached_pod_ip,
        visible_on_host,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_container_pod_runs_in_a_microvm_through_cri_and_matches_runc() {
    let (c, mut client) = start("cri-pod").await;
    let vpod = run_pod(&c, &mut client, VPOD).await;

    // Nothing of the pod is left: no shim (the VM lives in it), no state
    // dir (its disks), no mount.
    if let Err(left) = c.wait_no_shims(Duration::from_secs(30)) {
        panic!("shim (and its VM) left: {left:?}\n{}", c.log());
    }
    let state = c.shim_state_left();
    assert!(state.is_empty(), "pod state left: {state:?}");
    let m = mounts_under(&c.shim_state());
    assert!(m.is_empty(), "mounts left: {m:?}");

    let runc = run_pod(&c, &mut client, RUNC).await;

    let expect_app: BTreeSet<(String, String)> = [
        ("stdout", "secret=s3cret-value"),
        ("stdout", "config=hello from a configMap"),
        ("stdout", "motd=from the image"),
        ("stdout", "host=web"),
        ("stderr", "oops"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(vpod.app_log, expect_app, "vpod app log");
    assert_eq!(vpod.app_log, runc.app_log, "same app log as runc");
    assert_eq!(
        vpod.sidecar_log, runc.sidecar_log,
        "same sidecar log as runc"
    );
    assert!(
        vpod.sidecar_log.contains(&(
            "stdout".into(),
            "sidecar got pod-ip-ok over localhost".into()
        )),
        "{:?}",
        vpod.sidecar_log
    );
    assert_eq!(
        vpod.exec,
        (0, "written\ns3cret-value\n".into(), "e\n".into()),
        "ExecSync"
    );
    assert!(
        vpod.exec_in_container,
        "vpod's ExecSync runs in the container"
    );
    // The test bed's L1 switches its root (no chroot), so runc's exec joins its container.
    assert!(
        runc.exec_in_container,
        "runc's ExecSync runs in its container"
    );
    assert_eq!(vpod.exec, runc.exec, "same ExecSync as runc");
    assert_eq!((vpod.exec_fail, runc.exec_fail), (7, 7));
    assert!(
        vpod.reached_pod_ip && runc.reached_pod_ip,
        "{vpod:?} {runc:?}"
    );
    // The one difference: runc's processes are the host's, vpod's are not.
    assert!(runc.visible_on_host, "runc's container is a host process");
    assert!(!vpod.visible_on_host, "vpod's container lives in the guest");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_path_and_host_network_pods_are_refused_naming_the_field() {
    let (c, mut client) = start("cri-refuse").await;
    let logs = c.dir.join("pod-logs");

    // hostNetwork: RunPodSandbox itself fails.
    let mut host_net = cri::pod_config("hostnet", "0d3f6a1c-0000-4000-8000-00000000000a", &logs);
    host_net.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                network: v1::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = client.run_pod(&host_net, VPOD).await.unwrap_err();
    assert!(e.message().contains("hostNetwork"), "{e}");

    // hostPath: the container does not start, and says why.
    let uid = "0d3f6a1c-0000-4000-8000-00000000000b";
    let pod = cri::pod_config("hostpath", uid, &logs);
    std::fs::create_dir_all(Path::new(&pod.log_directory).join("app")).unwrap();
    let pod_id = client
        .run_pod(&pod, VPOD)
        .await
        .unwrap_or_else(|s| panic!("{s}\n{}", c.log()));
    let host_dir = c.dir.join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("host-secret"), "host only").unwrap();
    let mut app = cri::container_config("app", IMAGE, &["cat", "/data/host-secret"]);
    app.mounts = vec![v1::Mount {
        container_path: "/data".into(),
        host_path: host_dir.to_string_lossy().into_owned(),
        ..Default::default()
    }];
    let e = client
        .create_and_start(&pod_id, &pod, &app)
        .await
        .unwrap_err();
    assert!(e.message().contains("hostPath"), "{e}");
    assert!(
        e.message()
            .contains(&host_dir.to_string_lossy().into_owned()),
        "names the path: {e}"
    );
    // The pod itself keeps working: a plain container still runs in it.
    let ok = cri::container_config("ok", IMAGE, &["echo", "still fine"]);
    std::fs::create_dir_all(Path::new(&pod.log_directory).join("ok")).unwrap();
    let ok_id = client
        .create_and_start(&pod_id, &pod, &ok)
        .await
        .unwrap_or_else(|s| panic!("{s}\n{}", c.log()));
    cri::wait_log(
        &Path::new(&pod.log_directory).join("ok/0.log"),
        |l| l.iter().any(|(_, t)| t == "still fine"),
        "ok",
    )
    .await;
    // kubelet sees it exit 0, at a real time (not the epoch: a zero exit
    // time leaves a container "running" to CRI). CRI stamps started_at
    // when StartContainer returns, which a quick exit may precede.
    let t0 = Instant::now();
    let status = loop {
        let s = client
            .runtime
            .container_status(v1::ContainerStatusRequest {
                container_id: ok_id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == v1::ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "not exited: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(
        status.finished_at > status.created_at && status.started_at > 0,
        "{status:?}"
    );
    client.stop_and_remove_pod(&pod_id).await.unwrap();
    if let Err(left) = c.wait_no_shims(Duration::from_secs(30)) {
        panic!("shims left: {left:?}\n{}", c.log());
    }
}
