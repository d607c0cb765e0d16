//! `vpod serve` on real microVMs (issue 16): the project's CRI client against vpod's own CRI
//! server, no containerd: a pod on a CNI bridge network, its container's output in kubelet's
//! log format, ExecSync exit codes, the pod's IP reachable from the host, host namespaces
//! refused naming the field, idempotent Stop/Remove, and nothing left once the pod is removed
//! or the server stops. Named `vm_*` so cargo's runner sends it through the test bed.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use vpod_test_support as common;
use vpod_test_support::cri::{self, v1, Cri};
use vpod_test_support::serve::{self as server, IMAGE};

/// A server of this crate's `vpod`.
struct Serve;

impl Serve {
    fn start(name: &str) -> server::Serve {
        server::Serve::start(name, Path::new(env!("CARGO_BIN_EXE_vpod")))
    }

    fn start_with(name: &str, extra: &str) -> server::Serve {
        server::Serve::start_with(name, Path::new(env!("CARGO_BIN_EXE_vpod")), extra)
    }
}

/// GET / from `ip:port`, retried while the server comes up.
fn http_get(ip: &str, port: u16) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        let r = (|| {
            let mut s = std::net::TcpStream::connect_timeout(
                &format!("{ip}:{port}").parse().unwrap(),
                Duration::from_secs(5),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })();
        match r {
            Ok(out) if out.starts_with("HTTP/1.") => return Ok(out),
            _ if t0.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Ok(out) => return Err(format!("not HTTP: {out:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_pod_runs_through_vpods_own_cri_server_and_leaves_nothing() {
    let mut serve = Serve::start("pod");
    let log_root = serve.dir.join("pod-logs");
    runtime().block_on(async {
        let mut client = Cri::connect(&serve.sock()).await.unwrap();
        let v = client
            .runtime
            .version(v1::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
            ("vpod", "v1")
        );
        let st = client
            .runtime
            .status(v1::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let conds = st.status.unwrap().conditions;
        assert!(conds.iter().all(|c| c.status), "{conds:?}");

        let img = client
            .images
            .image_status(v1::ImageStatusRequest {
                image: Some(cri::image_spec("vpod-busybox:1")),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .expect("the imported image");
        assert!(img.repo_tags.contains(&IMAGE.to_string()), "{img:?}");
        assert!(
            img.size > 0 && img.uid.as_ref().map(|u| u.value) == Some(0),
            "{img:?}"
        );
        assert!(img.id.starts_with("sha256:"), "{img:?}");

        // Host namespaces: refused before anything boots, naming the field.
        let mut host_net = cri::pod_config("hostnet", "uid-hostnet", &log_root);
        host_net
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options = Some(v1::NamespaceOption {
            network: v1::NamespaceMode::Node as i32,
            pid: v1::NamespaceMode::Container as i32,
            ..Default::default()
        });
        let e = client.run_pod(&host_net, "").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("hostNetwork"), "{e}");

        let config = cri::pod_config("web", "uid-web", &log_root);
        let pod = client
            .run_pod(&config, "")
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s}\n{}", serve.log()));
        std::fs::create_dir_all(Path::new(&config.log_directory).join("web")).unwrap();
        let script = "mkdir -p /www && echo pod-web > /www/index.html && httpd -p 8080 -h /www \
                      && echo hello && echo oops >&2 && exec sleep 3600";
        let cc = cri::container_config("web", IMAGE, &["sh", "-c", script]);
        let id = client
            .create_and_start(&pod, &config, &cc)
            .await
            .unwrap_or_else(|s| panic!("create+start: {s}\n{}", serve.log()));

        // The log, in kubelet's format, each stream apart.
        let log = Path::new(&config.log_directory).join("web/0.log");
        let lines = cri::wait_log(
            &log,
            |l| l.iter().any(|(_, t)| t == "hello") && l.iter().any(|(_, t)| t == "oops"),
            "vpod serve",
        )
        .await;
        assert!(
            lines.contains(&("stdout".into(), "hello".into())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("stderr".into(), "oops".into())),
            "{lines:?}"
        );

        // ExecSync: output and exit codes.
        let (code, out, _) = client
            .exec_sync(&id, &["sh", "-c", "echo in-pod; exit 3"])
            .await
            .unwrap();
        assert_eq!((code, out.as_str()), (3, "in-pod\n"));
        let (code, out, _) = client.exec_sync(&id, &["hostname"]).await.unwrap();
        assert_eq!((code, out.trim()), (0, "web"));

        // The pod's IP is on the CNI network, and the host reaches its server.
        let ip = client.pod_ip(&pod).await.unwrap();
        assert!(ip.starts_with("10.88.201."), "pod IP {ip:?}");
        let page = tokio::task::spawn_blocking(move || http_get(&ip, 8080))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the pod's web server: {e}\n{}", serve.log()));
        assert!(page.ends_with("pod-web\n"), "{page}");

        let status = |client: &mut Cri, id: String| {
            let mut rt = client.runtime.clone();
            async move {
                rt.container_status(v1::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
            }
        };
        let s = status(&mut client, id.clone()).await;
        assert_eq!(s.state, v1::ContainerState::ContainerRunning as i32);
        assert_eq!(s.log_path, log.display().to_string());
        assert!(
            s.image_ref.starts_with("sha256:") && s.started_at > s.created_at,
            "{s:?}"
        );
        let listed = client
            .runtime
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(listed.len(), 1);

        // Stop: the container ends within its grace; a second stop is fine.
        let t0 = Instant::now();
        for _ in 0..2 {
            client
                .runtime
                .stop_container(v1::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 2,
                })
                .await
                .unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stop took {:?}",
            t0.elapsed()
        );
        let s = status(&mut client, id.clone()).await;
        assert_eq!(s.state, v1::ContainerState::ContainerExited as i32, "{s:?}");
        assert!(s.finished_at >= s.started_at && s.exit_code != 0, "{s:?}");

        // Unknown ids: Stop and Remove succeed, Status says NotFound.
        for unknown in ["0123456789abcdef", "nope"] {
            client
                .runtime
                .stop_container(v1::StopContainerRequest {
                    container_id: unknown.into(),
                    timeout: 0,
                })
                .await
                .unwrap();
            client
                .runtime
                .remove_container(v1::RemoveContainerRequest {
                    container_id: unknown.into(),
                })
                .await
                .unwrap();
            client.stop_and_remove_pod(unknown).await.unwrap();
        }
        let e = client
            .runtime
            .container_status(v1::ContainerStatusRequest {
                container_id: "nope".into(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);

        client.stop_and_remove_pod(&pod).await.unwrap();
        client.stop_and_remove_pod(&pod).await.unwrap();
    });
    let left = serve.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", serve.log());
    let st = serve.stop();
    assert!(st.success(), "vpod serve: {st}\n{}", serve.log());
    assert!(!serve.sock().exists(), "the socket stays");
}

#[test]
fn stopping_the_server_takes_its_pods_down() {
    let mut serve = Serve::start("stop");
    let log_root = serve.dir.join("pod-logs");
    runtime().block_on(async {
        let mut client = Cri::connect(&serve.sock()).await.unwrap();
        let config = cri::pod_config("sleeper", "uid-sleeper", &log_root);
        let pod = client
            .run_pod(&config, "")
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s}\n{}", serve.log()));
        let cc = cri::container_config("s", IMAGE, &["sleep", "3600"]);
        // kubelet makes the log's dir; without it the create fails and leaves nothing.
        let e = client
            .create_and_start(&pod, &config, &cc)
            .await
            .unwrap_err();
        assert!(e.message().contains("0.log"), "{e}");
        std::fs::create_dir_all(Path::new(&config.log_directory).join("s")).unwrap();
        client
            .create_and_start(&pod, &config, &cc)
            .await
            .unwrap_or_else(|s| panic!("create+start: {s}\n{}", serve.log()));
    });
    assert!(!serve.leftovers().is_empty(), "a running pod has its VM");
    let st = serve.stop();
    assert!(st.success(), "vpod serve: {st}\n{}", serve.log());
    let left = serve.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", serve.log());
}

#[test]
fn a_killed_server_leaves_nothing_once_it_starts_again() {
    let mut serve = Serve::start("kill");
    let log_root = serve.dir.join("pod-logs");
    let start = |serve: &server::Serve| {
        let sock = serve.sock();
        let log_root = log_root.clone();
        async move {
            let mut client = Cri::connect(&sock).await.unwrap();
            let config = cri::pod_config("victim", "uid-victim", &log_root);
            let pod = client.run_pod(&config, "").await?;
            std::fs::create_dir_all(Path::new(&config.log_directory).join("v")).unwrap();
            let cc = cri::container_config("v", IMAGE, &["sleep", "3600"]);
            client.create_and_start(&pod, &config, &cc).await?;
            Ok::<_, tonic::Status>(())
        }
    };
    runtime()
        .block_on(start(&serve))
        .unwrap_or_else(|s| panic!("the pod: {s}\n{}", serve.log()));
    assert!(!serve.leftovers().is_empty(), "a running pod has its VM");
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    serve.restart();
    let left = serve.leftovers();
    assert!(
        left.is_empty(),
        "left behind after the restart: {left:?}\n{}",
        serve.log()
    );
    // The pod's name and IP are free again: the same pod runs anew.
    runtime()
        .block_on(start(&serve))
        .unwrap_or_else(|s| panic!("the pod again: {s}\n{}", serve.log()));
    assert!(serve.stop().success(), "{}", serve.log());
    let left = serve.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", serve.log());
}

#[test]
fn pull_image_logs_in_through_a_mirror_and_a_pod_runs_the_pulled_image() {
    let creds = ("vpod", "s3cret");
    let reg = vpod_test_support::registry::Registry::start(Some(creds), None);
    let layout = std::env::temp_dir().join(format!("vpod-serve-pulled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    let layer = common::busybox_layer(vec![common::Entry::File(
        "etc/pulled".into(),
        b"pulled from the mirror\n".to_vec(),
        0o644,
    )]);
    common::layout(
        &layout,
        &[layer],
        serde_json::json!({"Cmd": ["cat", "/etc/pulled"]}),
    );
    runtime().block_on(reg.push_layout(&layout, "library/pulled", "1", Some(creds)));
    let _ = std::fs::remove_dir_all(&layout);
    // docker.io is never reached: its mirror answers first.
    let serve = Serve::start_with(
        "pull",
        &format!("[registry.mirrors]\n\"docker.io\" = [\"{}\"]\n", reg.host),
    );
    let log_root = serve.dir.join("pod-logs");
    runtime().block_on(async {
        let mut client = Cri::connect(&serve.sock()).await.unwrap();
        let pull = |auth: Option<v1::AuthConfig>| {
            let mut images = client.images.clone();
            async move {
                images
                    .pull_image(v1::PullImageRequest {
                        image: Some(cri::image_spec("pulled:1")),
                        auth,
                        sandbox_config: None,
                    })
                    .await
            }
        };
        let e = pull(None).await.unwrap_err();
        assert!(
            e.message().contains("pulled"),
            "a pull without the login: {e}"
        );
        let auth = v1::AuthConfig {
            username: creds.0.into(),
            password: creds.1.into(),
            ..Default::default()
        };
        let image_ref = pull(Some(auth))
            .await
            .unwrap_or_else(|s| panic!("PullImage: {s}\n{}", serve.log()))
            .into_inner()
            .image_ref;
        assert!(image_ref.starts_with("sha256:"), "{image_ref}");
        let img = client
            .images
            .image_status(v1::ImageStatusRequest {
                image: Some(cri::image_spec(&image_ref)),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .expect("the pulled image");
        assert_eq!(img.id, image_ref);
        assert_eq!(img.repo_tags, ["docker.io/library/pulled:1"]);
        assert_eq!(
            img.repo_digests,
            [format!("docker.io/library/pulled@{image_ref}")]
        );
        assert!(
            img.size > 0 && img.uid.as_ref().map(|u| u.value) == Some(0),
            "{img:?}"
        );
        let listed = client
            .images
            .list_images(v1::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images;
        assert!(listed.iter().any(|i| i.id == image_ref), "{listed:?}");

        // The pulled image's own command, from its config, through kubelet's image ref.
        let config = cri::pod_config("puller", "uid-puller", &log_root);
        let pod = client.run_pod(&config, "").await.unwrap();
        std::fs::create_dir_all(Path::new(&config.log_directory).join("p")).unwrap();
        let mut cc = cri::container_config("p", &image_ref, &[]);
        cc.command.clear();
        client
            .create_and_start(&pod, &config, &cc)
            .await
            .unwrap_or_else(|s| panic!("create+start: {s}\n{}", serve.log()));
        let log = Path::new(&config.log_directory).join("p/0.log");
        cri::wait_log(
            &log,
            |l| l.iter().any(|(_, t)| t == "pulled from the mirror"),
            "serve",
        )
        .await;
        client.stop_and_remove_pod(&pod).await.unwrap();

        // Removed (twice: the second finds nothing, which is fine).
        for _ in 0..2 {
            client
                .images
                .remove_image(v1::RemoveImageRequest {
                    image: Some(cri::image_spec(&image_ref)),
                })
                .await
                .unwrap();
        }
        let gone = client
            .images
            .image_status(v1::ImageStatusRequest {
                image: Some(cri::image_spec(&image_ref)),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image;
        assert!(gone.is_none(), "{gone:?}");
    });
}

#[test]
fn a_host_port_reaches_the_pod_and_twenty_cycles_leave_nothing() {
    let serve = Serve::start("cycles");
    let log_root = serve.dir.join("pod-logs");
    runtime().block_on(async {
        let mut client = Cri::connect(&serve.sock()).await.unwrap();
        let mut config = cri::pod_config("hp", "uid-hp", &log_root);
        config.port_mappings = vec![v1::PortMapping {
            protocol: v1::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: 18080,
            host_ip: String::new(),
        }];
        let pod = client
            .run_pod(&config, "")
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s}\n{}", serve.log()));
        std::fs::create_dir_all(Path::new(&config.log_directory).join("web")).unwrap();
        let script = "mkdir -p /www && echo via-host-port > /www/index.html \
                      && exec httpd -f -p 8080 -h /www";
        let cc = cri::container_config("web", IMAGE, &["sh", "-c", script]);
        client.create_and_start(&pod, &config, &cc).await.unwrap();
        // The host's own address on the pod network (the bridge's): portmap's DNAT of
        // locally made connections sends it to the pod.
        let page = tokio::task::spawn_blocking(|| http_get("10.88.201.1", 18080))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("host port 18080: {e}\n{}", serve.log()));
        assert!(page.ends_with("via-host-port\n"), "{page}");

        // 20 containers made, run and removed in the pod: none stays.
        std::fs::create_dir_all(Path::new(&config.log_directory).join("job")).unwrap();
        for i in 0..20 {
            let mut cc = cri::container_config("job", IMAGE, &["true"]);
            cc.metadata.as_mut().unwrap().attempt = i;
            cc.log_path = format!("job/{i}.log");
            let id = client.create_and_start(&pod, &config, &cc).await.unwrap();
            client
                .runtime
                .remove_container(v1::RemoveContainerRequest { container_id: id })
                .await
                .unwrap();
        }
        let left = client
            .runtime
            .list_containers(v1::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(left.len(), 1, "{left:?}");
        client.stop_and_remove_pod(&pod).await.unwrap();

        // 20 pods booted and removed: nothing stays (taps, netns, dirs, VMMs, addresses).
        for i in 0..20 {
            let config = cri::pod_config(&format!("cycle{i}"), &format!("uid-{i}"), &log_root);
            let pod = client
                .run_pod(&config, "")
                .await
                .unwrap_or_else(|s| panic!("pod {i}: {s}\n{}", serve.log()));
            client.stop_and_remove_pod(&pod).await.unwrap();
        }
        let pods = client
            .runtime
            .list_pod_sandbox(v1::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.is_empty(), "{pods:?}");
    });
    let left = serve.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", serve.log());
    let ipam: Vec<_> = std::fs::read_dir(serve.dir.join("cni-ipam/vpodserve"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(ipam.is_empty(), "addresses still allocated: {ipam:?}");
}
