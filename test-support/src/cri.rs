//! The project's CRI client (types from the `k8s-cri` crate) and the pod
//! and container configs kubelet would send, for tests and benchmarks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// A CRI connection: kubelet's two services on one socket.
#[derive(Clone, Debug)]
pub struct Cri {
    /// The RuntimeService (pods, containers, exec).
    pub runtime: RuntimeServiceClient<Channel>,
    /// The ImageService (pull, list, status).
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI server listening on `sock`.
    pub async fn connect(sock: &Path) -> Result<Cri, tonic::transport::Error> {
        let sock = sock.to_path_buf();
        // The URI only names the HTTP/2 authority; the connector dials the socket.
        let channel = Endpoint::from_static("http://cri")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Waits until the CRI image service knows `image` (an import through
    /// `ctr` reaches it by an event).
    pub async fn wait_image(&mut self, image: &str, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let r = self
                .images
                .image_status(cri::ImageStatusRequest {
                    image: Some(image_spec(image)),
                    verbose: false,
                })
                .await;
            match r {
                Ok(r) if r.get_ref().image.is_some() => return Ok(()),
                Ok(_) if t0.elapsed() < timeout => {}
                Ok(_) => return Err(format!("CRI does not know image {image}")),
                Err(s) if t0.elapsed() > timeout => return Err(format!("image status: {s}")),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// RunPodSandbox with `runtime_handler`; returns the sandbox id.
    pub async fn run_pod(
        &mut self,
        config: &cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: runtime_handler.into(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub async fn create_and_start(
        &mut self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        container: &cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(container.clone()),
                sandbox_config: Some(pod.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    /// StopPodSandbox then RemovePodSandbox (containers go with it).
    pub async fn stop_and_remove_pod(&mut self, pod_id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await?;
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await?;
        Ok(())
    }

    /// The pod's IP as the CRI reports it.
    pub async fn pod_ip(&mut self, pod_id: &str) -> Result<String, tonic::Status> {
        let s = self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await?
            .into_inner();
        Ok(s.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub async fn exec_sync(
        &mut self,
        container_id: &str,
        cmd: &[&str],
    ) -> Result<(i32, String, String), tonic::Status> {
        let r = self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: container_id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }
}

/// An `ImageSpec` naming `image`.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// A pod's config as kubelet sends it: name, uid, namespace, hostname and
/// its log directory (`<logs>/<ns>_<name>_<uid>`, kubelet's layout).
pub fn pod_config(name: &str, uid: &str, logs: &Path) -> cri::PodSandboxConfig {
    let namespace = "default";
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs
            .join(format!("{namespace}_{name}_{uid}"))
            .to_string_lossy()
            .into_owned(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(own_pid_namespace()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's config: `args` as its command, logs at `<name>/0.log`
/// under the pod's log directory (kubelet's layout).
pub fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(own_pid_namespace()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The namespaces kubelet asks for a pod without `shareProcessNamespace`: the pod's network and
/// IPC, a PID namespace per container (CRI's zero value, POD, would share one).
pub fn own_pid_namespace() -> cri::NamespaceOption {
    cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// A kubelet volume dir: `<kubelet_root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`
/// filled with `files`, mounted read-only at `container_path`.
pub fn kubelet_volume(
    kubelet_root: &Path,
    uid: &str,
    plugin: &str,
    name: &str,
    files: &[(&str, &str)],
    container_path: &str,
) -> cri::Mount {
    let dir: PathBuf = kubelet_root
        .join("pods")
        .join(uid)
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, content) in files {
        std::fs::write(dir.join(f), content).unwrap();
    }
    cri::Mount {
        container_path: container_path.into(),
        host_path: dir.to_string_lossy().into_owned(),
        readonly: true,
        ..Default::default()
    }
}

/// The container log's lines in kubelet's CRI format
/// (`<RFC3339Nano> <stream> <P|F> <text>`): (stream, text) of each, or an
/// error naming the first line that is not in that format.
pub fn parse_cri_log(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(ts), Some(stream), Some(tag), Some(msg)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("not a CRI log line: {line:?}"));
        };
        let ts_ok = ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T');
        if !ts_ok || !matches!(stream, "stdout" | "stderr") || !matches!(tag, "P" | "F") {
            return Err(format!("not a CRI log line: {line:?}"));
        }
        out.push((stream.to_owned(), msg.to_owned()));
    }
    Ok(out)
}

/// Reads a container's CRI log until `done` holds for its (stream, text) lines, or panics after
/// a minute.
pub async fn wait_log(
    path: &Path,
    done: impl Fn(&[(String, String)]) -> bool,
    what: &str,
) -> Vec<(String, String)> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines = parse_cri_log(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if done(&lines) {
            return lines;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: {} has only {lines:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A private containerd with its CRI plugin (vpod and runc as handlers), busybox imported as
/// `image` with `extra` files and config `config`, and a CRI client that knows the image and
/// the pause image.
pub async fn start_containerd(
    name: &str,
    shim: &Path,
    image: &str,
    extra: Vec<crate::Entry>,
    config: serde_json::Value,
) -> (crate::containerd::Containerd, Cri) {
    use crate::containerd::{Containerd, CRI_NAMESPACE, PAUSE_IMAGE};
    let c = Containerd::start(name, shim, true);
    c.import_busybox(CRI_NAMESPACE, image, extra, config);
    let mut client = Cri::connect(&c.sock())
        .await
        .unwrap_or_else(|e| panic!("CRI connect: {e}\n{}", c.log()));
    for i in [image, PAUSE_IMAGE] {
        if let Err(e) = client.wait_image(i, Duration::from_secs(30)).await {
            panic!("{e}\n{}", c.log());
        }
    }
    (c, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_others_refused() {
        let l = "2026-11-23T19:00:00.123456789Z stdout F hello world\n\
                 2026-11-23T19:00:00.2Z stderr F oops";
        assert_eq!(
            parse_cri_log(l).unwrap(),
            vec![
                ("stdout".into(), "hello world".into()),
                ("stderr".into(), "oops".into())
            ]
        );
        assert!(parse_cri_log("hello world\n").is_err());
        assert!(parse_cri_log("2026-11-23T19:00:00Z stdin F x").is_err());
    }
}
