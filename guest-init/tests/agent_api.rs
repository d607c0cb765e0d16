//! End-to-end test of the agent API without a VM: the real vpod-init server
//! on a unix socket, a tiny fake VMM in front of it that speaks the vsock
//! host protocol (`CONNECT <port>\n` -> `OK <hostport>\n`, then splices
//! bytes), and the real host client from vpod-agent-api calling every RPC.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::Code;
use vpod_agent_api::pb::{
    BootTimesRequest, HealthRequest, LogSource, LogsRequest, PingRequest, ShutdownKind,
    ShutdownRequest, VersionRequest,
};
use vpod_agent_api::AGENT_VSOCK_PORT;

mod harness;
use harness::{spawn_fake_vmm, Harness, TempDir};

const KMSG_TEXT: &str = "6,0,0,-;Linux version 6.1.0-test\n SUBSYSTEM=cpu\n\
                         4,1,2500,-;virtio_vsock: something odd\n";

#[tokio::test]
async fn every_rpc_through_fake_vmm() {
    let h = Harness::start(Some(KMSG_TEXT)).await;
    let mut c = h.client().await;

    // Version
    let v = c.version(VersionRequest {}).await.unwrap().into_inner();
    let uts = nix::sys::utsname::uname().unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.kernel_release, uts.release().to_string_lossy());
    assert_eq!(v.machine, uts.machine().to_string_lossy());
    assert_eq!(v.api_version, vpod_agent_api::API_VERSION);

    // Ping
    let p = c
        .ping(PingRequest { token: 0xdead_beef })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.token, 0xdead_beef);
    assert!(p.boottime_ns >= h.init_start.boottime_ns);

    // BootTimes
    let b = c
        .boot_times(BootTimesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.kernel_start_boottime_ns, 0);
    assert_eq!(b.init_start_boottime_ns, h.init_start.boottime_ns);
    assert_eq!(b.init_start_realtime_ns, h.init_start.realtime_ns);
    assert!(b.agent_listening_boottime_ns >= b.init_start_boottime_ns);
    assert!(b.agent_listening_realtime_ns >= b.init_start_realtime_ns);
    assert!(b.now_boottime_ns >= b.agent_listening_boottime_ns);
    assert!(b.now_realtime_ns >= b.agent_listening_realtime_ns);

    // Logs, all sources, no follow: kernel records (dictionary line skipped)
    // then the agent's lines; the stream ends by itself.
    let lines: Vec<_> = c
        .logs(LogsRequest {
            source: LogSource::All as i32,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    let kernel: Vec<_> = lines
        .iter()
        .filter(|l| l.source == LogSource::Kernel as i32)
        .map(|l| (l.seq, l.level, l.boottime_ns, l.message.as_str()))
        .collect();
    assert_eq!(
        kernel,
        vec![
            (0, 6, 0, "Linux version 6.1.0-test"),
            (1, 4, 2_500_000, "virtio_vsock: something odd")
        ]
    );
    assert!(lines
        .iter()
        .any(|l| l.source == LogSource::Agent as i32 && l.message == "agent test line 1"));

    // Logs, agent only, follow: backlog first, then a line logged later.
    let mut follow = c
        .logs(LogsRequest {
            source: LogSource::Agent as i32,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = follow.next().await.unwrap().unwrap();
    assert_eq!(first.message, "agent test line 1");
    h.log.warn("logged while following");
    let mut seen_new = false;
    for _ in 0..10 {
        let line = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .expect("followed line did not arrive")
            .unwrap()
            .unwrap();
        assert_eq!(line.source, LogSource::Agent as i32);
        if line.message == "logged while following" {
            assert_eq!(line.level, vpod_init::log::LEVEL_WARNING);
            seen_new = true;
            break;
        }
    }
    assert!(seen_new);
    drop(follow);

    // Logs, kernel only, follow on a non-pollable file: backlog then end.
    let kernel_only: Vec<_> = c
        .logs(LogsRequest {
            source: LogSource::Kernel as i32,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(kernel_only.len(), 2);

    // Logs with an unknown source is refused.
    let err = c
        .logs(LogsRequest {
            source: 99,
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Health, one report.
    let reports: Vec<_> = c
        .health(HealthRequest { interval_ms: 0 })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.uptime_ns > 0 && r.mem_total_bytes > 0 && r.procs_total > 0);
    assert!(r.mem_available_bytes <= r.mem_total_bytes);

    // Health, periodic: three reports, spaced by the interval.
    let mut stream = c
        .health(HealthRequest { interval_ms: 20 })
        .await
        .unwrap()
        .into_inner();
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        stamps.push(r.boottime_ns);
    }
    drop(stream);
    assert!(
        stamps[2] - stamps[0] >= 35_000_000,
        "reports not spaced: {stamps:?}"
    );

    // Health below the minimum interval is refused.
    let err = c
        .health(HealthRequest { interval_ms: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Shutdown with an unknown kind is refused and does not shut down.
    let err = c.shutdown(ShutdownRequest { kind: 7 }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    c.ping(PingRequest { token: 1 }).await.unwrap();

    // Shutdown: the reply arrives, then the server returns the kind.
    c.shutdown(ShutdownRequest {
        kind: ShutdownKind::Reboot as i32,
    })
    .await
    .unwrap();
    let kind = tokio::time::timeout(Duration::from_secs(5), h.server)
        .await
        .expect("server did not stop after Shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(kind, ShutdownKind::Reboot);
}

#[tokio::test]
async fn missing_kernel_log_fails_the_call_not_the_agent() {
    let h = Harness::start(None).await;
    let mut c = h.client().await;
    let err = c
        .logs(LogsRequest {
            source: LogSource::All as i32,
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("kmsg"), "{err}");

    // The agent log alone still works.
    let lines: Vec<_> = c
        .logs(LogsRequest {
            source: LogSource::Agent as i32,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
}

#[tokio::test]
async fn shutdown_drains_even_with_a_follower() {
    let h = Harness::start(Some(KMSG_TEXT)).await;
    let mut c = h.client().await;
    // A follower that never ends must not hold the guest up past the drain.
    let _follow = c
        .logs(LogsRequest {
            source: LogSource::Agent as i32,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    c.shutdown(ShutdownRequest {
        kind: ShutdownKind::Poweroff as i32,
    })
    .await
    .unwrap();
    let kind = tokio::time::timeout(Duration::from_secs(3), h.server)
        .await
        .expect("drain not bounded")
        .unwrap()
        .unwrap();
    assert_eq!(kind, ShutdownKind::Poweroff);
}

#[tokio::test]
async fn refused_port_is_a_handshake_error() {
    let h = Harness::start(None).await;
    let err = vpod_agent_api::connect(&h.vmm_sock(), 4242)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            vpod_agent_api::Error::HandshakeClosed { port: 4242, .. }
        ),
        "{err}"
    );
}

/// The real binary in its host mode: `--listen-unix`, announce line on
/// stderr, Shutdown makes it exit 0.
#[tokio::test]
async fn binary_serves_on_unix_socket_and_exits_on_shutdown() {
    let dir = TempDir::new();
    let agent_sock = dir.0.join("agent.sock");
    let kmsg = dir.0.join("kmsg");
    std::fs::write(&kmsg, KMSG_TEXT).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vpod-init"))
        .arg("--listen-unix")
        .arg(&agent_sock)
        .arg("--kmsg")
        .arg(&kmsg)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let vmm_sock = dir.0.join("vmm.sock");
    let _vmm = spawn_fake_vmm(&vmm_sock, agent_sock.clone());

    let mut c =
        vpod_agent_api::connect_with_retry(&vmm_sock, AGENT_VSOCK_PORT, Duration::from_secs(10))
            .await
            .unwrap();
    let b = c
        .boot_times(BootTimesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(b.agent_listening_boottime_ns >= b.init_start_boottime_ns);
    c.shutdown(ShutdownRequest {
        kind: ShutdownKind::Poweroff as i32,
    })
    .await
    .unwrap();

    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("vpod-init did not exit after Shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains(&format!(
            "vpod-init: agent listening on unix socket {} (init +",
            agent_sock.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("SHUTDOWN_KIND_POWEROFF"), "{stderr}");
    assert!(!agent_sock.exists(), "socket left behind");
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpod-init"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown argument \"--bogus\""), "{stderr}");
}

/// Container and volume RPCs refuse bad input with the right gRPC code and a
/// message naming what is wrong, before touching the system (these run on
/// the host: no container is ever made).
#[tokio::test]
async fn pod_rpcs_refuse_bad_input_with_clear_statuses() {
    use tonic::Code;
    use vpod_agent_api::pb::{
        ContainerRef, CreateContainerRequest, KillContainerRequest, Process, PutVolumeRequest,
        ResizeTtyRequest, VolumeFile,
    };
    let h = Harness::start(None).await;
    let mut c = h.client().await;
    fn check<T>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
        let s = r.err().expect("an error");
        assert_eq!(s.code(), code, "{s:?}");
        assert!(
            s.message().contains(needle),
            "{needle:?} not in {:?}",
            s.message()
        );
    }
    let proc_ = Some(Process {
        args: vec!["true".into()],
        ..Default::default()
    });
    check(
        c.create_container(CreateContainerRequest {
            id: "../etc".into(),
            process: proc_.clone(),
            image_disk: "img0".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "container id",
    );
    check(
        c.create_container(CreateContainerRequest {
            id: "app".into(),
            image_disk: "img0".into(),
            process: Some(Process::default()),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "process.args is empty",
    );
    check(
        c.create_container(CreateContainerRequest {
            id: "app".into(),
            image_disk: "img0".into(),
            process: proc_.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "ephemeral disk is not mounted",
    );
    let missing = ContainerRef { id: "nope".into() };
    check(
        c.start_container(missing.clone()).await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.wait_container(missing.clone()).await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.remove_container(missing.clone()).await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.attach(missing.clone()).await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.kill_container(KillContainerRequest {
            id: "nope".into(),
            signal: 9,
            all: false,
        })
        .await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.resize_tty(ResizeTtyRequest {
            id: "nope".into(),
            rows: 1,
            cols: 1,
        })
        .await,
        Code::NotFound,
        "no container nope",
    );
    check(
        c.put_volume(PutVolumeRequest {
            name: "s".into(),
            files: vec![VolumeFile {
                path: "../../etc/passwd".into(),
                data: b"x".to_vec(),
                mode: 0,
            }],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "without '..'",
    );
    check(
        c.put_volume(PutVolumeRequest {
            name: "a/b".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "volume name",
    );
    // Nothing above hurt the agent.
    c.ping(PingRequest { token: 7 }).await.unwrap();
}
