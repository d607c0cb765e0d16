//! The agent under test without a VM: the real vpod-init server on a unix socket, a tiny fake
//! VMM in front of it that speaks the vsock host protocol (`CONNECT <port>\n` -> `OK
//! <hostport>\n`, then splices bytes), and the real host client from vpod-agent-api.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use vpod_agent_api::pb::ShutdownKind;
use vpod_agent_api::{AgentClient, AGENT_VSOCK_PORT};
use vpod_init::clock::Stamp;
use vpod_init::log::AgentLog;
use vpod_init::{serve, AgentConfig, AgentService, ServeError};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vpod-init-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fake VMM: accepts host connections on `vmm_sock`, reads the CONNECT line
/// and, for `AGENT_VSOCK_PORT`, splices the stream to the agent's socket
/// (as the VMM splices it to the guest's vsock port). Other ports are
/// refused the way a VMM does when the guest answers RST: it hangs up.
pub fn spawn_fake_vmm(vmm_sock: &Path, agent_sock: PathBuf) -> JoinHandle<()> {
    let listener = UnixListener::bind(vmm_sock).unwrap();
    tokio::spawn(async move {
        let mut next_host_port = 1u32 << 30;
        loop {
            let (mut host, _) = listener.accept().await.unwrap();
            next_host_port += 1;
            let host_port = next_host_port;
            let agent_sock = agent_sock.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    if host.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if b[0] == b'\n' {
                        break;
                    }
                    line.push(b[0]);
                }
                let line = String::from_utf8(line).unwrap();
                let port: u32 = match line.strip_prefix("CONNECT ").map(str::parse) {
                    Some(Ok(p)) => p,
                    _ => return,
                };
                if port != AGENT_VSOCK_PORT {
                    return;
                }
                let Ok(mut guest) = UnixStream::connect(&agent_sock).await else {
                    return;
                };
                host.write_all(format!("OK {host_port}\n").as_bytes())
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
            });
        }
    })
}

pub struct Harness {
    pub dir: TempDir,
    pub log: Arc<AgentLog>,
    pub init_start: Stamp,
    pub server: JoinHandle<Result<ShutdownKind, ServeError>>,
    _vmm: JoinHandle<()>,
}

impl Harness {
    pub async fn start(kmsg: Option<&str>) -> Self {
        let init_start = Stamp::now();
        let dir = TempDir::new();
        let kmsg_path = dir.0.join("kmsg");
        if let Some(text) = kmsg {
            std::fs::write(&kmsg_path, text).unwrap();
        }
        let agent_sock = dir.0.join("agent.sock");
        let listener = UnixListener::bind(&agent_sock).unwrap();
        let log = Arc::new(AgentLog::new(64, 0));
        log.info("agent test line 1");
        let (service, shutdown) = AgentService::new(AgentConfig {
            init_start,
            agent_listening: Stamp::now(),
            kmsg_path,
            proc_root: PathBuf::from("/proc"),
            log: log.clone(),
            reaper: vpod_init::reaper::Reaper::new(),
        });
        let server = tokio::spawn(serve(
            service,
            shutdown,
            UnixListenerStream::new(listener),
            Duration::from_millis(500),
        ));
        let vmm = spawn_fake_vmm(&dir.0.join("vmm.sock"), agent_sock);
        Harness {
            dir,
            log,
            init_start,
            server,
            _vmm: vmm,
        }
    }

    pub fn vmm_sock(&self) -> PathBuf {
        self.dir.0.join("vmm.sock")
    }

    pub async fn client(&self) -> AgentClient<vpod_agent_api::AgentChannel> {
        vpod_agent_api::connect_with_retry(
            &self.vmm_sock(),
            AGENT_VSOCK_PORT,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }
}
