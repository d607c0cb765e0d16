//! Pod tests that need no VM: its files, its config checks.

use super::files::prepare;
use super::*;
use std::os::unix::fs::PermissionsExt;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn config(base: &Path) -> PodConfig {
    PodConfig {
        ephemeral_dir: Some(base.join("lib/ephemeral/p1")),
        vcpus: 1,
        mem_mib: 128,
        ephemeral_bytes: 16 << 20,
        spare_slots: 2,
        ..PodConfig::new(
            "p1",
            base.join("run/pods/p1"),
            base.join("vmlinux"),
            base.join("initrd"),
        )
    }
}

/// Issue 12 item 8: state dirs 0700, files 0600 (not the umask's 0755/0644), and the
/// ephemeral disk in its own dir (a real disk), not in the state dir (/run, tmpfs).
#[test]
fn pod_dirs_and_files_are_private_and_the_disk_is_elsewhere() {
    let base = std::env::temp_dir().join(format!("vpod-pod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let cfg = config(&base);
    let (guard, disks, slots) = prepare(&cfg).unwrap();
    let eph_dir = cfg.ephemeral_dir.clone().unwrap();
    for d in [&cfg.dir, &eph_dir, &base.join("run/pods")] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    assert_eq!(disks[0].path, eph_dir.join("ephemeral.img"));
    assert!(!paths::ephemeral(&cfg.dir).exists());
    assert_eq!(slots.len(), 2);
    for f in [
        disks[0].path.clone(),
        paths::slot(&cfg.dir, 0),
        paths::slot(&cfg.dir, 1),
        paths::console(&cfg.dir),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // A second pod with the same dirs is refused; the first one's are left alone.
    assert!(matches!(prepare(&cfg), Err(PodError::Exists { .. })));
    drop(guard);
    assert!(!cfg.dir.exists() && !eph_dir.exists());
    // A leftover disk dir is refused, and the state dir made for it removed again.
    std::fs::create_dir_all(&eph_dir).unwrap();
    assert!(matches!(prepare(&cfg), Err(PodError::Exists { .. })));
    assert!(!cfg.dir.exists());
    std::fs::remove_dir_all(&base).unwrap();
}

/// Issue 12 item 6: a pod's netns is never the host's, whatever the caller passes.
#[tokio::test]
async fn a_netns_outside_the_netns_dirs_is_refused_before_anything_is_made() {
    let base = std::env::temp_dir().join(format!("vpod-pod-ns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("vmlinux"), "").unwrap();
    std::fs::write(base.join("initrd"), "").unwrap();
    let mut cfg = config(&base);
    cfg.net = Some(crate::net::PodNet {
        netns: "/proc/1/ns/net".into(),
        veth: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 1],
        address: "10.0.0.2".into(),
        prefix_len: 24,
        gateway: None,
        mtu: 1500,
    });
    let e = Pod::boot(cfg.clone()).await.unwrap_err();
    assert!(matches!(e, PodError::NetnsRefused { .. }), "{e}");
    assert!(!cfg.dir.exists());
    std::fs::remove_dir_all(&base).unwrap();
}

/// The defaults every caller used to write out.
#[test]
fn a_config_has_the_defaults() {
    let cfg = PodConfig::new("p1", "/run/p1", "/k", "/i");
    assert_eq!((cfg.id.as_str(), cfg.hostname.as_str()), ("p1", "p1"));
    assert_eq!(cfg.dir, Path::new("/run/p1"));
    let size = crate::VmSize::for_pod(&[], 1);
    assert_eq!((cfg.vcpus, cfg.mem_mib), (size.vcpus, size.mem_mib));
    assert_eq!(
        cfg.ephemeral_bytes,
        crate::ephemeral::DEFAULT_EPHEMERAL_BYTES
    );
    assert_eq!(cfg.spare_slots, DEFAULT_SPARE_SLOTS);
    assert_eq!(cfg.boot_timeout, DEFAULT_BOOT_TIMEOUT);
    assert!(cfg.ephemeral_dir.is_none() && cfg.images.is_empty() && cfg.net.is_none());
}

/// Errors name the pod, the operation and the container, and carry the agent's message (not
/// the whole status).
#[test]
fn container_errors_say_which_container_and_operation() {
    let e = PodError::Container {
        id: "p1".into(),
        container: "app".into(),
        op: ContainerOp::Attach,
        status: tonic::Status::not_found("no container app"),
    };
    assert_eq!(
        e.to_string(),
        "pod p1: attach to container app: no container app"
    );
    assert_eq!(e.code(), Some(tonic::Code::NotFound));
    let e = PodError::Ended {
        id: "p1".into(),
        container: "app".into(),
        op: ContainerOp::WriteStdin,
    };
    assert_eq!(
        e.to_string(),
        "pod p1: write to the stdin of container app: the stream has ended"
    );
    assert_eq!(e.code(), None);
}

#[test]
fn create_options_say_what_a_spec_cannot() {
    let mut req = vpod_agent_api::pb::CreateContainerRequest {
        process: Some(Default::default()),
        ..Default::default()
    };
    req.sysctls
        .insert("net.core.somaxconn".into(), "4096".into());
    CreateOptions {
        stdin: true,
        privileged: true,
        pod_sysctls: [
            ("net.core.somaxconn".to_string(), "128".to_string()),
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        ]
        .into(),
    }
    .apply(&mut req);
    assert!(req.privileged && req.process.as_ref().unwrap().stdin);
    // The container's own value wins; the pod's fill in the rest.
    assert_eq!(req.sysctls["net.core.somaxconn"], "4096");
    assert_eq!(req.sysctls["kernel.shm_rmid_forced"], "1");
    CreateOptions::default().apply(&mut req);
    assert!(!req.privileged && !req.process.as_ref().unwrap().stdin);
}

mod stdio {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tokio_stream::StreamExt;
    use vpod_agent_api::pb::{exec_input::Input, ExecInput, ExecResize, ExitStatus, StdinChunk};

    use super::super::exec::start_message;
    use super::super::stdio::stdin_chunks;
    use super::*;

    fn chunk(id: &str, data: &[u8], close_on_end: bool) -> StdinChunk {
        StdinChunk {
            id: id.into(),
            data: data.to_vec(),
            close_on_end,
        }
    }

    /// The stdin rule: the first chunk names the container (and asks for stdin to close at the
    /// end); the data follows, naming nothing.
    #[tokio::test]
    async fn a_containers_stdin_stream_names_it_first() {
        let data = tokio_stream::iter([b"ab".to_vec(), b"c".to_vec()]);
        let msgs: Vec<_> = stdin_chunks("app".into(), data).collect().await;
        assert_eq!(
            msgs,
            [
                chunk("app", b"", true),
                chunk("", b"ab", false),
                chunk("", b"c", false)
            ]
        );
        let msgs: Vec<_> = stdin_chunks("app".into(), tokio_stream::empty())
            .collect()
            .await;
        assert_eq!(msgs, [chunk("app", b"", true)], "EOF at once still closes");
    }

    /// What a thread reading host stdin writes reaches the stream in order; closing ends it.
    #[tokio::test]
    async fn a_containers_stdin_from_a_thread_ends_the_stream_on_close() {
        let (tx, rx) = mpsc::channel(4);
        let mut stdin = Stdin::container("p1", "app", tx, None);
        std::thread::spawn(move || {
            stdin.blocking_write(b"one".to_vec()).unwrap();
            stdin.blocking_write(b"two".to_vec()).unwrap();
            stdin.blocking_close().unwrap();
        });
        let msgs: Vec<_> = stdin_chunks("app".into(), ReceiverStream::new(rx))
            .collect()
            .await;
        assert_eq!(
            msgs,
            [
                chunk("app", b"", true),
                chunk("", b"one", false),
                chunk("", b"two", false)
            ]
        );
    }

    /// A write after the agent ended the call reports the call's own error.
    #[tokio::test]
    async fn a_write_after_the_call_failed_says_why() {
        let (tx, rx) = mpsc::channel(4);
        let call = tokio::spawn(async {
            Err(PodError::Container {
                id: "p1".into(),
                container: "app".into(),
                op: ContainerOp::WriteStdin,
                status: tonic::Status::failed_precondition("container app has no stdin"),
            })
        });
        drop(rx);
        let mut stdin = Stdin::container("p1", "app", tx, Some(call));
        let e = stdin.write(b"x".to_vec()).await.unwrap_err();
        assert!(e.to_string().ends_with("has no stdin"), "{e}");
        let e = stdin.write(b"x".to_vec()).await.unwrap_err();
        assert!(matches!(e, PodError::Ended { .. }), "{e}");
    }

    fn input(i: Input) -> ExecInput {
        ExecInput { input: Some(i) }
    }

    /// An exec's input: the start first, then stdin, resizes, signals and the end of stdin,
    /// each as its own message.
    #[tokio::test]
    async fn an_execs_input_messages() {
        let process = vpod_agent_api::pb::Process {
            args: vec!["sh".into()],
            ..Default::default()
        };
        let Some(Input::Start(start)) = start_message("app", process.clone()).input else {
            panic!("not a start");
        };
        assert_eq!(
            (start.container_id.as_str(), start.process),
            ("app", Some(process))
        );
        let (tx, mut rx) = mpsc::channel(8);
        let control = ExecControl::new("p1", "app", tx);
        let mut stdin = control.stdin();
        stdin.write(b"in".to_vec()).await.unwrap();
        control.resize(50, 132).await.unwrap();
        control.signal(15).await.unwrap();
        stdin.close().await.unwrap();
        let want = [
            input(Input::Stdin(b"in".to_vec())),
            input(Input::Resize(ExecResize {
                rows: 50,
                cols: 132,
            })),
            input(Input::Signal(15)),
            input(Input::CloseStdin(true)),
        ];
        for w in want {
            assert_eq!(rx.recv().await.unwrap(), w);
        }
        drop(rx);
        let e = control.signal(9).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod p1: exec in container app: the stream has ended"
        );
    }

    fn events(
        list: Vec<Result<OutputEvent, tonic::Status>>,
    ) -> impl tokio_stream::Stream<Item = Result<OutputEvent, tonic::Status>> + Send + 'static {
        tokio_stream::iter(list)
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    /// The output copier: each stream to its writer, stderr to stdout's without one of its own,
    /// output without a writer dropped, an exec's exit ends the copy.
    #[tokio::test]
    async fn the_output_copier_routes_streams_and_stops_at_the_exit() {
        use OutputEvent::{Exit, Stderr, Stdout};
        let out3 = || {
            events(vec![
                Ok(Stdout(b"a".to_vec())),
                Ok(Stderr(b"b".to_vec())),
                Ok(Stdout(b"c".to_vec())),
            ])
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let attach = Output::new("p1", "app", ContainerOp::Attach, out3());
        assert_eq!(
            attach.copy_to(Some(&mut o), Some(&mut e)).await.unwrap(),
            None
        );
        assert_eq!((text(&o), text(&e)), ("ac", "b"));

        let mut o = Vec::new();
        let attach = Output::new("p1", "app", ContainerOp::Attach, out3());
        attach.copy_to(Some(&mut o), None::<Vec<u8>>).await.unwrap();
        assert_eq!(text(&o), "abc");
        // No stdout writer (containerd gave no stdout FIFO): stdout is dropped, stderr arrives.
        let mut e = Vec::new();
        let attach = Output::new("p1", "app", ContainerOp::Attach, out3());
        attach.copy_to(None::<Vec<u8>>, Some(&mut e)).await.unwrap();
        assert_eq!(text(&e), "b");
        let drained = Output::new("p1", "app", ContainerOp::Attach, out3());
        let none = None::<Vec<u8>>;
        assert_eq!(drained.copy_to(none.clone(), none).await.unwrap(), None);

        let exit = ExitStatus {
            exit_code: 7,
            ..Default::default()
        };
        let exec = events(vec![
            Ok(Stdout(b"x".to_vec())),
            Ok(Exit(exit.clone())),
            Ok(Stdout(b"after".to_vec())),
        ]);
        let mut o = Vec::new();
        let exec = Output::new("p1", "app", ContainerOp::Exec, exec);
        let got = exec.copy_to(Some(&mut o), None::<Vec<u8>>).await.unwrap();
        assert_eq!((got, text(&o)), (Some(exit), "x"));
    }

    /// A broken stream is an error naming the operation, after what came before it is copied.
    #[tokio::test]
    async fn a_broken_output_stream_is_an_error_after_the_bytes_before_it() {
        let broken = events(vec![
            Ok(OutputEvent::Stdout(b"a".to_vec())),
            Err(tonic::Status::unavailable("connection lost")),
        ]);
        let mut o = Vec::new();
        let out = Output::new("p1", "app", ContainerOp::Attach, broken);
        let e = out
            .copy_to(Some(&mut o), None::<Vec<u8>>)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod p1: attach to container app: connection lost"
        );
        assert_eq!(text(&o), "a");
    }

    /// An exec's input stays open while its output is copied, and closes after its exit.
    #[tokio::test]
    async fn an_exec_keeps_its_input_open_until_it_exits() {
        let (tx, mut input) = mpsc::channel(4);
        let (ev_tx, ev_rx) = mpsc::channel(4);
        let out = Output::new("p1", "app", ContainerOp::Exec, ReceiverStream::new(ev_rx));
        let exec = Exec::new(ExecControl::new("p1", "app", tx), out);
        let copy = tokio::spawn(exec.copy_to(None::<Vec<u8>>, None::<Vec<u8>>));
        tokio::task::yield_now().await;
        assert!(matches!(
            input.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
        let exit = ExitStatus::default();
        ev_tx
            .send(Ok(OutputEvent::Exit(exit.clone())))
            .await
            .unwrap();
        assert_eq!(copy.await.unwrap().unwrap(), Some(exit));
        assert!(
            input.recv().await.is_none(),
            "the input closes with the exec"
        );
    }
}
