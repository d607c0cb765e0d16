//! Kubernetes behaviours kubelet's pods rely on (issue 15), through Debian's containerd 1.6 and
//! its CRI plugin with vpod beside runc in the same containerd, on real microVMs in the test bed:
//! a stop right after the start reaches the process, stopping containers that just exited never
//! fails, the pod's sysctls and a shared PID namespace reach its containers, and the guest kernel
//! has what pods do in their own network namespace (bridges, netfilter, ipvs, tun), and seccomp
//! profiles apply as written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vpod_test_support::containerd::{Containerd, RUNC, VPOD};
use vpod_test_support::cri::{self, v1, Cri};

const IMAGE: &str = "docker.io/library/vpod-busybox:1";
/// Long enough that a lost SIGTERM shows as a SIGKILL (exit 137) instead of the trap's exit 0,
/// short enough that a failing run still ends.
const STOP_TIMEOUT_S: i64 = 30;

async fn start(name: &str) -> (Containerd, Cri) {
    cri::start_containerd(
        name,
        Path::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2")),
        IMAGE,
        Vec::new(),
        serde_json::json!({"Cmd": ["sh"]}),
    )
    .await
}

/// A running pod of `handler`, its config (for CreateContainer) and its log directory.
struct PodRun {
    id: String,
    config: v1::PodSandboxConfig,
    logs: PathBuf,
}

async fn run_pod(
    c: &Containerd,
    client: &mut Cri,
    handler: &str,
    name: &str,
    linux: v1::LinuxPodSandboxConfig,
) -> PodRun {
    let uid = format!("{name}-{handler}");
    let mut config = cri::pod_config(name, &uid, &c.dir.join("pod-logs"));
    let mut linux = linux;
    // kubelet's namespaces unless the test asks for others.
    linux
        .security_context
        .get_or_insert_with(|| v1::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::own_pid_namespace()),
            ..Default::default()
        });
    config.linux = Some(linux);
    let id = client
        .run_pod(&config, handler)
        .await
        .unwrap_or_else(|s| panic!("RunPodSandbox {name} ({handler}): {s}\n{}", c.log()));
    let logs = PathBuf::from(&config.log_directory);
    PodRun { id, config, logs }
}

impl PodRun {
    async fn start(&self, client: &mut Cri, c: &Containerd, cc: &v1::ContainerConfig) -> String {
        let name = &cc.metadata.as_ref().unwrap().name;
        std::fs::create_dir_all(self.logs.join(name)).unwrap();
        client
            .create_and_start(&self.id, &self.config, cc)
            .await
            .unwrap_or_else(|s| panic!("create+start {name}: {s}\n{}", c.log()))
    }

    fn log(&self, container: &str) -> PathBuf {
        self.logs.join(container).join("0.log")
    }
}

async fn status(client: &mut Cri, id: &str) -> v1::ContainerStatus {
    client
        .runtime
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}

async fn stop(client: &mut Cri, id: &str) -> Result<(), String> {
    client
        .runtime
        .stop_container(v1::StopContainerRequest {
            container_id: id.into(),
            timeout: STOP_TIMEOUT_S,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn texts(lines: &[(String, String)]) -> Vec<String> {
    lines.iter().map(|(_, t)| t.clone()).collect()
}

/// StopContainer right after StartContainer returns: the SIGTERM must reach the container's
/// process even though it installs its handler a moment later (kubelet's graceful stop), so the
/// trap's exit 0 is the status, not the grace period's SIGKILL. A second stop is OK at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_right_after_the_start_reaches_the_process_and_a_second_stop_is_ok() {
    let (c, mut client) = start("cri-stop").await;
    let mut seen: HashMap<&str, Vec<(i32, Vec<String>)>> = HashMap::new();
    for handler in [VPOD, RUNC] {
        let pod = run_pod(&c, &mut client, handler, "stopper", Default::default()).await;
        for i in 0..3 {
            let name = format!("trap{i}");
            let cc = cri::container_config(
                &name,
                IMAGE,
                &[
                    "sh",
                    "-c",
                    "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done",
                ],
            );
            let id = pod.start(&mut client, &c, &cc).await;
            let t0 = Instant::now();
            stop(&mut client, &id)
                .await
                .unwrap_or_else(|s| panic!("StopContainer {name} ({handler}): {s}\n{}", c.log()));
            let took = t0.elapsed();
            let st = status(&mut client, &id).await;
            let log = cri::wait_log(&pod.log(&name), |_| true, &name).await;
            eprintln!(
                "{handler} {name}: stopped in {took:?}, exit {} {:?}",
                st.exit_code,
                texts(&log)
            );
            seen.entry(handler)
                .or_default()
                .push((st.exit_code, texts(&log)));
            // Stopping a stopped container again answers at once.
            let t1 = Instant::now();
            stop(&mut client, &id).await.expect("second StopContainer");
            assert!(t1.elapsed() < Duration::from_secs(STOP_TIMEOUT_S as u64 / 2));
        }
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
    }
    for (code, log) in &seen[VPOD] {
        assert_eq!(
            (*code, log.as_slice()),
            (0, &["got-term".to_string()][..]),
            "vpod: the SIGTERM was lost (runc: {:?})",
            seen[RUNC]
        );
    }
}

/// Containers that exit on their own while (or just before) they are stopped: StopContainer and
/// then StopPodSandbox succeed (the shim answers a kill of an exited process as runc's does).
#[tokio::test(flavor = "multi_thread")]
async fn stopping_containers_that_just_exited_never_fails() {
    let (c, mut client) = start("cri-exited").await;
    for handler in [VPOD, RUNC] {
        let pod = run_pod(&c, &mut client, handler, "quitter", Default::default()).await;
        for (i, delay_ms) in [0u64, 50, 150, 300].into_iter().enumerate() {
            let name = format!("quit{i}");
            let cc = cri::container_config(&name, IMAGE, &["sh", "-c", "sleep 0.1; exit 0"]);
            let id = pod.start(&mut client, &c, &cc).await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            stop(&mut client, &id)
                .await
                .unwrap_or_else(|s| panic!("StopContainer {name} ({handler}): {s}\n{}", c.log()));
            // containerd deletes the task before it records the exit: a stop landing between the
            // two returns at once, the status follows a moment later (runc's alike).
            let t0 = Instant::now();
            loop {
                let st = status(&mut client, &id).await;
                if st.state() == v1::ContainerState::ContainerExited {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{handler} {name}: {st:?}\n{}",
                    c.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // And a container that exits as the pod stops.
        let cc = cri::container_config("last", IMAGE, &["sh", "-c", "sleep 0.2"]);
        pod.start(&mut client, &c, &cc).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        client
            .stop_and_remove_pod(&pod.id)
            .await
            .unwrap_or_else(|s| panic!("StopPodSandbox ({handler}): {s}\n{}", c.log()));
    }
}

/// `securityContext.sysctls` (one safe, one unsafe namespaced sysctl, one from each of the pod's
/// network and IPC namespaces) and `shareProcessNamespace: true`: every container sees the values
/// and its sibling's processes, as under runc.
#[tokio::test(flavor = "multi_thread")]
async fn pod_sysctls_and_a_shared_pid_namespace_reach_the_containers() {
    let (c, mut client) = start("cri-podns").await;
    let mut outputs = HashMap::new();
    for handler in [VPOD, RUNC] {
        let linux = v1::LinuxPodSandboxConfig {
            sysctls: HashMap::from([
                ("net.core.somaxconn".to_string(), "1234".to_string()),
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ]),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = run_pod(&c, &mut client, handler, "sharing", linux).await;
        let shared = |mut cc: v1::ContainerConfig| {
            let sc = cc
                .linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap();
            sc.namespace_options = Some(v1::NamespaceOption {
                pid: v1::NamespaceMode::Pod as i32,
                ..Default::default()
            });
            cc
        };
        let a = shared(cri::container_config(
            "a",
            IMAGE,
            &["sh", "-c", "exec sleep 3133"],
        ));
        pod.start(&mut client, &c, &a).await;
        let b = shared(cri::container_config(
            "b",
            IMAGE,
            &[
                "sh",
                "-c",
                "until ps -o args | grep -q '^sleep 3133'; do sleep 0.2; done; echo saw-sleep; \
                 echo somaxconn=$(cat /proc/sys/net/core/somaxconn) \
                 shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced); \
                 [ \"$(cat /proc/1/cmdline | tr '\\0' ' ')\" != 'sleep 3133 ' ] && echo pid1-is-not-a; \
                 exec sleep 2147483647",
            ],
        ));
        pod.start(&mut client, &c, &b).await;
        let log = cri::wait_log(&pod.log("b"), |l| l.len() >= 3, handler).await;
        outputs.insert(handler, texts(&log));
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
    }
    assert_eq!(
        outputs[VPOD],
        [
            "saw-sleep",
            "somaxconn=1234 shm_rmid_forced=1",
            "pid1-is-not-a"
        ],
        "vpod"
    );
    assert_eq!(outputs[VPOD], outputs[RUNC], "vpod vs runc");
}

/// What CNI plugins, service-mesh init containers and network tools do inside the pod's own
/// network namespace: a container with NET_ADMIN makes a bridge, and the guest kernel has
/// netfilter (iptables legacy and nft's conntrack, NAT), ipvs and tun built in.
#[tokio::test(flavor = "multi_thread")]
async fn the_guest_kernel_has_bridges_netfilter_ipvs_and_tun() {
    let (c, mut client) = start("cri-netkernel").await;
    let pod = run_pod(&c, &mut client, VPOD, "netadmin", Default::default()).await;
    let mut cc = cri::container_config(
        "net",
        IMAGE,
        &[
            "sh",
            "-c",
            "brctl addbr br0 && ip link set br0 up && ip link show br0 | grep -q UP && echo bridge-ok; \
             for f in /proc/net/ip_tables_names /proc/net/ip6_tables_names /proc/net/ip_vs /proc/sys/net/netfilter/nf_conntrack_max /sys/class/misc/tun; do \
             test -e $f && echo has $f; done; echo done; exec sleep 2147483647",
        ],
    );
    let sc = cc
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.capabilities = Some(v1::Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        ..Default::default()
    });
    pod.start(&mut client, &c, &cc).await;
    let log = cri::wait_log(
        &pod.log("net"),
        |l| l.iter().any(|(_, t)| t == "done"),
        "net",
    )
    .await;
    assert_eq!(
        texts(&log),
        [
            "bridge-ok",
            "has /proc/net/ip_tables_names",
            "has /proc/net/ip6_tables_names",
            "has /proc/net/ip_vs",
            "has /proc/sys/net/netfilter/nf_conntrack_max",
            "has /sys/class/misc/tun",
            "done"
        ]
    );
    client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
}

/// `terminationMessagePath`: kubelet bind-mounts an empty host file of the pod's
/// (`<root>/pods/<uid>/containers/<name>/<id>`) at the path and reads it when it hears of the
/// exit. What the container wrote is in that file by the time ContainerStatus says EXITED.
#[tokio::test(flavor = "multi_thread")]
async fn the_termination_message_reaches_kubelets_file_before_the_exit_is_reported() {
    let (c, mut client) = start("cri-termlog").await;
    for handler in [VPOD, RUNC] {
        let pod = run_pod(&c, &mut client, handler, "ender", Default::default()).await;
        let uid = &pod.config.metadata.as_ref().unwrap().uid;
        let dir = c
            .kubelet_root()
            .join("pods")
            .join(uid)
            .join("containers/app");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("7c1e0f3a");
        std::fs::write(&file, "").unwrap();
        let mut cc = cri::container_config(
            "app",
            IMAGE,
            &[
                "sh",
                "-c",
                "printf 'goodbye\\nworld' > /dev/termination-log; exit 3",
            ],
        );
        cc.mounts = vec![v1::Mount {
            container_path: "/dev/termination-log".into(),
            host_path: file.to_string_lossy().into_owned(),
            ..Default::default()
        }];
        let id = pod.start(&mut client, &c, &cc).await;
        let t0 = Instant::now();
        let st = loop {
            let st = status(&mut client, &id).await;
            if st.state() == v1::ContainerState::ContainerExited {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{handler}: no exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Read at once, as kubelet does.
        let message = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            (st.exit_code, message.as_str()),
            (3, "goodbye\nworld"),
            "{handler}"
        );
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
    }
}

/// Bind-mounts `file` at `target` (made empty first), as kubelet makes a subPath.
fn bind_mount(file: &Path, target: &Path) {
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(target, "").unwrap();
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(file)
        .arg(target)
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind {}", file.display());
}

/// subPath volume mounts: kubelet bind-mounts the file of the volume at
/// `<root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>` and hands that; a configMap key
/// and a secret key each land as a single file, as under runc.
#[tokio::test(flavor = "multi_thread")]
async fn subpath_mounts_of_config_maps_and_secrets_are_single_files() {
    let (c, mut client) = start("cri-subpath").await;
    let mut outputs = HashMap::new();
    for handler in [VPOD, RUNC] {
        let pod = run_pod(&c, &mut client, handler, "subpaths", Default::default()).await;
        let uid = pod.config.metadata.as_ref().unwrap().uid.clone();
        let kubelet = c.kubelet_root();
        let cm = cri::kubelet_volume(
            &kubelet,
            &uid,
            "configmap",
            "app-config",
            &[("greeting", "hello"), ("other", "not mounted")],
            "/unused",
        );
        let secret = cri::kubelet_volume(
            &kubelet,
            &uid,
            "secret",
            "db-pass",
            &[("password", "s3cret")],
            "/unused",
        );
        let subpaths = kubelet.join("pods").join(&uid).join("volume-subpaths");
        let targets = [
            (
                Path::new(&cm.host_path).join("greeting"),
                subpaths.join("app-config/app/0"),
                "/etc/app/greeting",
            ),
            (
                Path::new(&secret.host_path).join("password"),
                subpaths.join("db-pass/app/1"),
                "/etc/pw",
            ),
        ];
        let mut cc = cri::container_config(
            "app",
            IMAGE,
            &[
                "sh",
                "-c",
                "cat /etc/app/greeting; echo; cat /etc/pw; echo; ls /etc/app; exec sleep 2147483647",
            ],
        );
        for (file, target, path) in &targets {
            bind_mount(file, target);
            cc.mounts.push(v1::Mount {
                container_path: (*path).into(),
                host_path: target.to_string_lossy().into_owned(),
                readonly: true,
                ..Default::default()
            });
        }
        pod.start(&mut client, &c, &cc).await;
        let log = cri::wait_log(&pod.log("app"), |l| l.len() >= 3, handler).await;
        outputs.insert(handler, texts(&log));
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
        for (_, target, _) in &targets {
            let _ = std::process::Command::new("umount").arg(target).status();
        }
    }
    assert_eq!(outputs[VPOD], ["hello", "s3cret", "greeting"], "vpod");
    assert_eq!(outputs[VPOD], outputs[RUNC], "vpod vs runc");
}

/// A pod cgroup as kubelet makes it before RunPodSandbox (cgroupfs driver): `memory.max` the sum
/// of the containers' limits (and the overhead), removed again on drop.
struct PodCgroup(PathBuf);

impl PodCgroup {
    fn new(name: &str, memory_max: u64) -> PodCgroup {
        let root = Path::new("/sys/fs/cgroup");
        // kubelet's pod cgroups get these controllers (a fresh L1 enables none).
        for c in ["+memory", "+cpu", "+pids"] {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), c);
        }
        let dir = root.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), memory_max.to_string()).unwrap();
        PodCgroup(dir)
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pod whose containers' limits add up to more than the default VM (576 MiB) gets a VM of
/// the pod cgroup's size: a container with a 1 GiB limit allocates a 500 MB string (about 800 MB
/// resident in busybox awk, which the default VM can't hold), as under runc.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_vm_is_as_big_as_its_pod_cgroup_says() {
    big_container("cri-sizing", true).await;
}

/// The same container in a pod kubelet gave no memory limit (the VM boots at the default size):
/// the VM grows (virtio-mem) before the container is created, so it holds its 800 MB as under
/// runc.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_vm_grows_when_a_later_container_needs_more() {
    big_container("cri-grow", false).await;
}

async fn big_container(name: &str, pod_cgroup: bool) {
    let (c, mut client) = start(name).await;
    let mut outputs = HashMap::new();
    for handler in [VPOD, RUNC] {
        let cg = pod_cgroup.then(|| PodCgroup::new(&format!("vpodtest-sizing-{handler}"), 1 << 30));
        let linux = v1::LinuxPodSandboxConfig {
            cgroup_parent: if pod_cgroup {
                format!("/vpodtest-sizing-{handler}")
            } else {
                String::new()
            },
            ..Default::default()
        };
        let pod = run_pod(&c, &mut client, handler, "big", linux).await;
        let mut cc = cri::container_config(
            "eater",
            IMAGE,
            &[
                "sh",
                "-c",
                "awk 'BEGIN { s = sprintf(\"%500000000s\", \"\"); print \"held\", length(s) }'; \
                 exec sleep 2147483647",
            ],
        );
        cc.linux.as_mut().unwrap().resources = Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        });
        let id = pod.start(&mut client, &c, &cc).await;
        let t0 = Instant::now();
        let log = loop {
            let text = std::fs::read_to_string(pod.log("eater")).unwrap_or_default();
            let lines = cri::parse_cri_log(&text).unwrap();
            if !lines.is_empty() {
                break lines;
            }
            let st = status(&mut client, &id).await;
            assert_ne!(
                st.state(),
                v1::ContainerState::ContainerExited,
                "{handler}: the container ended ({}, {}) before it held its memory",
                st.exit_code,
                st.reason
            );
            assert!(
                t0.elapsed() < Duration::from_secs(240),
                "{handler}: nothing held"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        outputs.insert(handler, texts(&log));
        if handler == VPOD && !pod_cgroup {
            let grew = c.log().lines().any(|l| l.contains("grew to"));
            assert!(grew, "vpod: no growth in the shim's log\n{}", c.log());
        }
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
        drop(cg);
    }
    assert_eq!(outputs[VPOD], ["held 500000000"], "vpod");
    assert_eq!(outputs[VPOD], outputs[RUNC], "vpod vs runc");
}

/// A `Localhost` seccomp profile is applied as written, rule by rule (an errno of its choosing,
/// a rule on an argument's value), and RuntimeDefault is an allow-list that still refuses
/// namespaces (a user namespace needs no capability, so only the filter refuses it); the same
/// outputs as under runc.
#[tokio::test(flavor = "multi_thread")]
async fn localhost_seccomp_profiles_apply_as_written_and_runtime_default_still_confines() {
    let (c, mut client) = start("cri-seccomp").await;
    let profile = c.dir.join("seccomp-mkdir.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                // kill(pid, 0) only: a probe refused, a real signal let through.
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let script = "grep '^Seccomp:' /proc/self/status | tr -d ' \\t'; \
                  mkdir /tmp/made 2>&1 || echo mkdir-refused; \
                  kill -0 $$ 2>/dev/null && echo probe-allowed || echo probe-refused; \
                  kill -CONT $$ && echo cont-allowed; \
                  unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-refused; \
                  exec sleep 2147483647";
    let mut outputs = HashMap::new();
    for handler in [VPOD, RUNC] {
        let pod = run_pod(&c, &mut client, handler, "filtered", Default::default()).await;
        for (name, sp) in [
            (
                "localhost",
                v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: profile.display().to_string(),
                },
            ),
            (
                "default",
                v1::SecurityProfile {
                    profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                },
            ),
        ] {
            let mut cc = cri::container_config(name, IMAGE, &["sh", "-c", script]);
            let sc = cc
                .linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap();
            sc.seccomp = Some(sp);
            pod.start(&mut client, &c, &cc).await;
            // The unshare line is the script's last.
            let done = |l: &[(String, String)]| l.iter().any(|(_, t)| t.starts_with("unshare-"));
            let log = cri::wait_log(&pod.log(name), done, handler).await;
            outputs.insert((handler, name), texts(&log));
        }
        client.stop_and_remove_pod(&pod.id).await.expect("stop pod");
    }
    assert_eq!(
        outputs[&(VPOD, "localhost")],
        [
            "Seccomp:2",
            "mkdir: can't create directory '/tmp/made': Permission denied",
            "mkdir-refused",
            "probe-refused",
            "cont-allowed",
            "unshare-allowed",
        ],
        "vpod, Localhost profile"
    );
    assert_eq!(
        outputs[&(VPOD, "default")],
        [
            "Seccomp:2",
            "probe-allowed",
            "cont-allowed",
            "unshare-refused"
        ],
        "vpod, RuntimeDefault"
    );
    for name in ["localhost", "default"] {
        assert_eq!(
            outputs[&(VPOD, name)],
            outputs[&(RUNC, name)],
            "{name}: vpod vs runc"
        );
    }
}
