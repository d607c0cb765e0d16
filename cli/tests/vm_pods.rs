//! Pods on real microVMs: `vpod run` and its detached commands, and the
//! sandbox library for what the CLI does not expose (two containers, late
//! images). Named `vm_*` so cargo's runner sends it through the test bed
//! when the host's KVM can't run Linux guests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vpod_agent_api::pb::{CreateContainerRequest, MountKind, Process};
use vpod_images::{FsType, Store};
use vpod_sandbox::{
    CreateOptions, ImageDisk, Output as ContainerOutput, OutputEvent, Pod, PodConfig,
};

use vpod_test_support as common;

/// One pod at a time: the test bed has few CPUs and boots are slow there.
static ONE_POD: Mutex<()> = Mutex::new(());

use common::guest_file;

struct Env {
    dir: PathBuf,
    root: PathBuf,
    run: PathBuf,
    image: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Env {
    fn new(name: &str) -> Env {
        let one = ONE_POD.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("vpod-pods-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root");
        let layout = dir.join("layout");
        let layer = common::busybox_layer(vec![common::Entry::File(
            "etc/hello".into(),
            b"hello from the image\n".to_vec(),
            0o644,
        )]);
        common::layout(
            &layout,
            &[layer],
            serde_json::json!({"Cmd": ["sh"], "Env": ["IMAGE_ENV=1"]}),
        );
        let store = Store::open(&root).unwrap();
        vpod_images::import(&store, &layout, Some("busybox:test")).unwrap();
        Env {
            run: dir.join("run"),
            root,
            dir,
            image: "busybox:test".into(),
            _one: one,
        }
    }

    fn vpod(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vpod"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--run-dir")
            .arg(&self.run)
            .args(args)
            .env("VPOD_KERNEL", guest_file("vmlinux"))
            .env("VPOD_INITRD", guest_file("initramfs.cpio"))
            .stdin(Stdio::null());
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.vpod(args).output().unwrap()
    }

    /// `vpod run -d ... IMAGE -- cmd`; returns the pod id.
    fn run_detached(&self, flags: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.push(&self.image);
        args.push("--");
        args.extend_from_slice(cmd);
        let o = self.out(&args);
        assert!(o.status.success(), "run -d failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left running goes too.
        for e in std::fs::read_dir(self.run.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = self
                .vpod(&["rm", "-f", &e.file_name().to_string_lossy()])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use common::output_text as text;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", name.to_string_lossy()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Every regular file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&p).is_ok_and(|data| contains(&data, needle)) =>
                {
                    hits.push(p)
                }
                _ => {}
            }
        }
    }
    hits
}

#[test]
fn run_streams_output_and_exits_with_the_container_code() {
    let env = Env::new("run");
    let o = env.out(&[
        "run",
        &env.image,
        "--",
        "sh",
        "-c",
        "cat /etc/hello; echo to-stderr >&2; echo env=$IMAGE_ENV host=$(hostname); exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("hello from the image"), "{}", text(&o));
    assert!(out.contains("env=1 host="), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("to-stderr"),
        "{}",
        text(&o)
    );
    // A foreground run leaves nothing behind.
    let left: Vec<_> = std::fs::read_dir(env.run.join("pods")).unwrap().collect();
    assert!(left.is_empty(), "records left: {left:?}");
    assert!(processes_with("__supervise").is_empty());

    // -i: our stdin reaches the container; its end is the container's EOF.
    let mut child = env
        .vpod(&[
            "run",
            "-i",
            &env.image,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo after-eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"piped through the vm\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        "PIPED THROUGH THE VM\nafter-eof\n",
        "{}",
        text(&o)
    );
}

#[test]
fn a_memory_limit_ends_in_oomkilled_137() {
    let env = Env::new("oom");
    // busybox tail keeps all of a newline-free input in memory.
    let o = env.out(&[
        "run",
        "--memory",
        "32Mi",
        &env.image,
        "--",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("OOMKilled"),
        "{}",
        text(&o)
    );
}

#[test]
fn filling_the_ephemeral_disk_fails_the_writer_not_the_pod() {
    let env = Env::new("enospc");
    let o = env.out(&[
        "run",
        "--ephemeral-storage",
        "48Mi",
        &env.image,
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=200; echo dd-exit=$?; rm /big; echo ok > /after; cat /after",
    ]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert!(all.contains("No space left on device"), "{all}");
    assert!(!all.contains("dd-exit=0"), "{all}");
    assert!(
        stdout(&o).contains("ok"),
        "the pod kept working after ENOSPC: {all}"
    );
}

#[test]
fn detached_pod_exec_with_a_tty_logs_stop_and_rm_leave_nothing() {
    let env = Env::new("detached");
    // The container's process is PID 1 of its namespace: it only gets
    // SIGTERM because it handles it.
    let id = env.run_detached(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 143' TERM; echo started-ok; while true; do sleep 1; done",
        ],
    );
    let ps = env.out(&["ps"]);
    assert!(
        stdout(&ps).contains(&id) && stdout(&ps).contains("Running"),
        "{}",
        text(&ps)
    );

    let e = env.out(&[
        "exec",
        "-t",
        &id,
        "--",
        "sh",
        "-c",
        "tty; stty size; echo exec-code; exit 7",
    ]);
    assert_eq!(e.status.code(), Some(7), "{}", text(&e));
    let out = stdout(&e);
    assert!(out.contains("/dev/pts/"), "exec -t has a tty: {}", text(&e));
    assert!(out.contains("24 80"), "default tty size: {}", text(&e));
    let e = env.out(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "[ -t 0 ] || echo no-tty; cat /etc/hello",
    ]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    assert!(stdout(&e).contains("no-tty") && stdout(&e).contains("hello from the image"));
    let bad = env.out(&["exec", &id, "--", "no-such-command"]);
    assert_eq!(bad.status.code(), Some(125), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("executable file not found"),
        "{}",
        text(&bad)
    );

    let t0 = Instant::now();
    while !stdout(&env.out(&["logs", &id])).contains("started-ok") {
        assert!(t0.elapsed() < Duration::from_secs(30), "no output in logs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rm = env.out(&["rm", &id]);
    assert!(!rm.status.success(), "rm of a running pod must need -f");
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("is running"),
        "{}",
        text(&rm)
    );

    let stop = env.out(&["stop", "-t", "20", &id]);
    assert!(stop.status.success(), "{}", text(&stop));
    let ps = env.out(&["ps", "-a"]);
    assert!(stdout(&ps).contains("Exited (143)"), "{}", text(&ps));
    assert!(stdout(&env.out(&["logs", &id])).contains("got-term"));
    assert!(processes_with(&id).is_empty(), "{:?}", processes_with(&id));
    let rm = env.out(&["rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(!env.run.join("pods").join(&id).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(env.dir.to_str().unwrap()), "{mounts}");
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!stdout(&links).contains("tap"), "{}", stdout(&links));
}

#[test]
fn secrets_live_in_guest_ram_only_and_follow_host_updates() {
    let env = Env::new("secret");
    // The host copy sits on a tmpfs, like kubelet's secret volumes.
    let src = PathBuf::from("/dev/shm").join(format!("vpod-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let first = format!("s3cret-{}-first", std::process::id());
    std::fs::write(src.join("token"), &first).unwrap();
    let spec = format!("tok={}", src.display());
    // A small disk: the scan below reads all of it (under TCG in the test bed).
    let id = env.run_detached(
        &["--secret", &spec, "--ephemeral-storage", "32Mi"],
        &["sleep", "1000"],
    );

    let read = || stdout(&env.out(&["exec", &id, "--", "cat", "/run/secrets/tok/token"]));
    assert_eq!(read(), first);
    let m = env.out(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "grep ' /run/secrets/tok ' /proc/mounts",
    ]);
    assert!(
        stdout(&m).starts_with("tmpfs "),
        "secret mount: {}",
        text(&m)
    );
    let w = env.out(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo x > /run/secrets/tok/token",
    ]);
    assert!(
        !w.status.success(),
        "secret volume must be read-only: {}",
        text(&w)
    );

    // kubelet-style update: new content appears in the guest.
    let second = format!("s3cret-{}-second", std::process::id());
    std::fs::write(src.join("token"), &second).unwrap();
    let t0 = Instant::now();
    while read() != second {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "update never reached the guest"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Neither value is in any file of the pod (its disk image included),
    // the store, or the logs.
    let vm_dir = env.run.join("pods").join(&id);
    for needle in [&first, &second] {
        let mut hits = files_holding(&vm_dir, needle.as_bytes());
        hits.extend(files_holding(&env.root, needle.as_bytes()));
        assert!(
            hits.is_empty(),
            "secret bytes found on the host in {hits:?}"
        );
    }
    let stop = env.out(&["rm", "-f", &id]);
    assert!(stop.status.success(), "{}", text(&stop));
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn clear_errors_for_bad_limits_and_unknown_images() {
    let env = Env::new("errors");
    let o = env.out(&["run", "--memory", "lots", &env.image, "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--memory"),
        "{}",
        text(&o)
    );
    let o = env.out(&["run", "no-such-image:1", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-image"),
        "{}",
        text(&o)
    );
    let o = env
        .vpod(&["run", &env.image, "--", "true"])
        .env("VPOD_KERNEL", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("guest kernel /nonexistent/vmlinux not found"),
        "{}",
        text(&o)
    );
    assert!(std::fs::read_dir(env.run.join("pods"))
        .unwrap()
        .next()
        .is_none());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn container(id: &str, serial: &str, args: &[&str]) -> CreateContainerRequest {
    CreateContainerRequest {
        id: id.into(),
        image_disk: serial.into(),
        process: Some(Process {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            capabilities: vpod_sandbox::defaults::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            ..Default::default()
        }),
        hostname: id.into(),
        ..Default::default()
    }
}

fn pod_config(env: &Env, images: Vec<ImageDisk>, slots: usize) -> PodConfig {
    PodConfig {
        vcpus: 1,
        mem_mib: 256,
        ephemeral_bytes: 64 << 20,
        images,
        spare_slots: slots,
        boot_timeout: Duration::from_secs(240),
        ..PodConfig::new(
            "lib-pod",
            env.dir.join("pod"),
            guest_file("vmlinux"),
            guest_file("initramfs.cpio"),
        )
    }
}

/// A pod booted with the test image as disk `img0`.
async fn boot_with_image(env: &Env, disk: PathBuf) -> Pod {
    let images = vec![ImageDisk {
        serial: "img0".into(),
        path: disk,
    }];
    Pod::boot(pod_config(env, images, 0)).await.unwrap()
}

/// The container's output stream (attach before start: nothing is lost).
async fn attach(pod: &Pod, id: &str) -> ContainerOutput {
    pod.attach(id).await.unwrap()
}

/// All of an attached container's output, once it has exited.
async fn drain(mut out: ContainerOutput) -> String {
    let mut text = Vec::new();
    while let Ok(Some(OutputEvent::Stdout(data) | OutputEvent::Stderr(data))) = out.next().await {
        text.extend(data);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn image_disk(env: &Env) -> PathBuf {
    let store = Store::open(&env.root).unwrap();
    let d = store.resolve(&env.image).unwrap();
    store.ensure_block_image(&d, FsType::detect()).unwrap().path
}

#[test]
fn two_containers_share_localhost_but_not_files() {
    let env = Env::new("two");
    let disk = image_disk(&env);
    runtime().block_on(async {
        let pod = boot_with_image(&env, disk).await;
        pod.create_container(container(
            "server",
            "img0",
            &[
                "sh",
                "-c",
                "echo mine > /tmp/server-file; nc -l -p 8080 -e echo hello-over-localhost",
            ],
        ))
        .await
        .unwrap();
        pod.start_container("server").await.unwrap();
        // The server may take a while to listen in a slow test bed: retry for a minute.
        let client_cmd = "sleep 1; [ -e /tmp/server-file ] && echo SEES-SERVER-FILE; \
             i=0; while [ $i -lt 60 ]; do nc 127.0.0.1 8080 && exit 0; sleep 1; i=$((i+1)); done; \
             exit 1";
        pod.create_container(container("client", "img0", &["sh", "-c", client_cmd]))
            .await
            .unwrap();
        let out = attach(&pod, "client").await;
        pod.start_container("client").await.unwrap();
        let text = within(&env, "the client's output", drain(out)).await;
        let status = within(&env, "the client's exit", pod.wait_container("client")).await;
        assert_eq!(status.unwrap().exit_code, 0, "client: {text}");
        assert!(text.contains("hello-over-localhost"), "{text}");
        assert!(!text.contains("SEES-SERVER-FILE"), "{text}");
        let server = within(&env, "the server's exit", pod.wait_container("server")).await;
        assert_eq!(server.unwrap().exit_code, 0);
        pod.remove_container("server").await.unwrap();
        pod.remove_container("client").await.unwrap();
        pod.shutdown(Duration::from_secs(30)).await;
    });
    assert!(!env.dir.join("pod").exists(), "pod dir left behind");
}

/// `f`, or a panic naming what never came, with the guest's console, after two minutes (what
/// the test waits for takes seconds; a hang must fail the test, not the test bed's clock).
async fn within<T>(env: &Env, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(v) => v,
        Err(_) => {
            let console = std::fs::read_to_string(env.dir.join("pod/console.log"))
                .unwrap_or_else(|e| format!("(no console: {e})"));
            let tail: String = console
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{what} did not come within 120 s; guest console:\n{tail}")
        }
    }
}

#[test]
fn a_late_container_gets_its_image_through_a_slot() {
    let env = Env::new("late");
    let disk = image_disk(&env);
    runtime().block_on(async {
        let pod = Pod::boot(pod_config(&env, Vec::new(), 1)).await.unwrap();
        pod.attach_image(&ImageDisk {
            serial: "img-late".into(),
            path: disk,
        })
        .unwrap();
        pod.create_container(container("late", "img-late", &["cat", "/etc/hello"]))
            .await
            .unwrap();
        let out = attach(&pod, "late").await;
        pod.start_container("late").await.unwrap();
        assert_eq!(drain(out).await, "hello from the image\n");
        assert_eq!(pod.wait_container("late").await.unwrap().exit_code, 0);
        // Tmpfs mounts and emptyDirs go where asked.
        let mut c = container(
            "vols",
            "img-late",
            &["sh", "-c", "grep ' /scratch ' /proc/mounts"],
        );
        c.mounts.push(vpod_agent_api::pb::Mount {
            destination: "/scratch".into(),
            kind: MountKind::Tmpfs as i32,
            ..Default::default()
        });
        pod.create_container(c).await.unwrap();
        pod.start_container("vols").await.unwrap();
        assert_eq!(pod.wait_container("vols").await.unwrap().exit_code, 0);
        pod.shutdown(Duration::from_secs(30)).await;
    });
}

/// containerd-style spec of a pod container, with kubelet volume paths
/// under `kubelet`.
fn kubelet_spec(kubelet: &Path, extra_mount: &str) -> oci_spec::runtime::Spec {
    let vols = kubelet.join("pods/uid-1/volumes");
    let json = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "user": {{"uid": 1000, "gid": 1000}},
    "args": ["sh", "-c", "id -u; cat /etc/secret/token; echo; cat /etc/hosts; echo data > /cache/f && cat /cache/f; echo masked=$(wc -c < /proc/cmdline); touch /rootfs-write 2>/dev/null || echo ro-rootfs"],
    "env": ["PATH=/bin"],
    "cwd": "/tmp",
    "capabilities": {{"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]}},
    "noNewPrivileges": true
  }},
  "root": {{"path": "rootfs", "readonly": true}},
  "hostname": "web-0",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/etc/secret", "type": "bind", "source": "{secret}", "options": ["rbind", "ro"]}},
    {{"destination": "/cache", "type": "bind", "source": "{empty}", "options": ["rbind", "rw"]}},
    {{"destination": "/etc/hosts", "type": "bind", "source": "{hosts}", "options": ["rbind", "rw"]}}
    {extra_mount}
  ],
  "linux": {{
    "resources": {{"memory": {{"limit": 67108864}}}},
    "namespaces": [{{"type": "pid"}}, {{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}, {{"type": "network", "path": "/var/run/netns/x"}}],
    "maskedPaths": ["/proc/kcore", "/proc/cmdline"],
    "readonlyPaths": ["/proc/sys"],
    "seccomp": {seccomp}
  }}
}}"#,
        secret = vols.join("kubernetes.io~secret/tok").display(),
        empty = vols.join("kubernetes.io~empty-dir/cache").display(),
        hosts = kubelet.join("pods/uid-1/etc-hosts").display(),
        // A RuntimeDefault profile as containerd puts one in a spec.
        seccomp = serde_json::to_string(&vpod_sandbox::seccomp::runtime_default()).unwrap(),
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn oci_spec_containers_get_kubelet_volumes_and_host_paths_are_refused() {
    let env = Env::new("oci");
    let disk = image_disk(&env);
    let kubelet = env.dir.join("kubelet");
    let vols = kubelet.join("pods/uid-1/volumes");
    std::fs::create_dir_all(vols.join("kubernetes.io~secret/tok")).unwrap();
    std::fs::create_dir_all(vols.join("kubernetes.io~empty-dir/cache")).unwrap();
    std::fs::write(vols.join("kubernetes.io~secret/tok/token"), "tok-value").unwrap();
    std::fs::write(
        kubelet.join("pods/uid-1/etc-hosts"),
        "127.0.0.1 localhost web-0\n",
    )
    .unwrap();
    // Another pod's secret, as a hostPath volume would name it.
    let other = kubelet.join("pods/uid-2/volumes/kubernetes.io~secret/tok");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("token"), "other-pods-token").unwrap();
    // This pod is uid-1 (containerd's io.kubernetes.cri.sandbox-uid names it for the shim).
    let classifier = vpod_sandbox::MountClassifier::new(&kubelet).for_pod(Some("uid-1"), None);
    runtime().block_on(async {
        let pod = boot_with_image(&env, disk).await;
        let theft = kubelet_spec(
            &kubelet,
            &format!(
                r#", {{"destination": "/stolen", "type": "bind", "source": "{}", "options": ["rbind"]}}"#,
                other.display()
            ),
        );
        let e = pod
            .create_container_with("thief", &theft, "img0", &classifier, CreateOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("spec.volumes[].hostPath"), "{e}");
        // hostPath: refused before the guest hears of it.
        let hp = kubelet_spec(
            &kubelet,
            r#", {"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind"]}"#,
        );
        let e = pod
            .create_container_with("bad", &hp, "img0", &classifier, CreateOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("spec.volumes[].hostPath"), "{e}");
        let listed = pod.list_containers().await.unwrap();
        assert!(listed.is_empty());

        let spec = kubelet_spec(&kubelet, "");
        pod.create_container_with("web", &spec, "img0", &classifier, CreateOptions::default())
            .await
            .unwrap();
        let out = attach(&pod, "web").await;
        pod.start_container("web").await.unwrap();
        let text = drain(out).await;
        let status = pod.wait_container("web").await.unwrap();
        assert_eq!(status.exit_code, 0, "{text}");
        for want in [
            "1000\n",
            "tok-value",
            "localhost web-0",
            "data\n",
            "masked=0",
            "ro-rootfs",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let stats = pod.container_stats("web").await.unwrap();
        assert!(stats.cpu_usage_ns > 0, "{stats:?}");
        pod.shutdown(Duration::from_secs(30)).await;
    });
}

#[test]
fn seccomp_privileged_tty_resize_and_stop_after_grace() {
    let env = Env::new("seccomp");
    let disk = image_disk(&env);
    runtime().block_on(async {
        let pod = boot_with_image(&env, disk).await;
        let cmd = ["sh", "-c", "mkdir -p /m && mount -t tmpfs x /m"];
        for (id, privileged, want) in [("confined", false, 1), ("privileged", true, 0)] {
            let mut c = container(id, "img0", &cmd);
            let p = c.process.as_mut().unwrap();
            p.capabilities.push("CAP_SYS_ADMIN".into());
            p.seccomp = vpod_agent_api::pb::SeccompProfile::RuntimeDefault as i32;
            c.privileged = privileged;
            pod.create_container(c).await.unwrap();
            pod.start_container(id).await.unwrap();
            let st = pod.wait_container(id).await.unwrap();
            assert_eq!(st.exit_code, want, "{id}: {st:?}");
        }

        // A TTY container sees the size the host sets.
        let mut c = container("tty", "img0", &["sh", "-c", "sleep 2; stty size; tty"]);
        c.process.as_mut().unwrap().tty = true;
        pod.create_container(c).await.unwrap();
        let out = attach(&pod, "tty").await;
        pod.start_container("tty").await.unwrap();
        pod.resize_tty("tty", 50, 132).await.unwrap();
        let text = drain(out).await;
        assert!(text.contains("50 132"), "{text}");
        assert!(text.contains("/dev/pts/"), "{text}");

        // Ignoring SIGTERM costs the grace period, then SIGKILL.
        let c = container(
            "stubborn",
            "img0",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        );
        pod.create_container(c).await.unwrap();
        pod.start_container("stubborn").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let st = pod
            .stop_container("stubborn", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!((st.exit_code, st.signal), (137, 9), "{st:?}");
        assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
        pod.shutdown(Duration::from_secs(30)).await;
    });
}

/// Port-forward below containerd: the sandbox's own path (a vsock connection and agent call per
/// copy, as the pod's forwarder makes them), big copies beside refused ports, at once and one
/// after another. Every copy must come back whole; a refused port must fail without touching
/// the others.
#[test]
fn port_forward_copies_stay_whole_beside_refused_ports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LINES: u32 = 200_000;
    const ROUNDS: usize = 10;
    // The VMM's stderr reaches the host log: shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let env = Env::new("fwd");
    let disk = image_disk(&env);
    runtime().block_on(async {
        let pod = boot_with_image(&env, disk).await;
        let script = format!(
            "mkdir -p /www && seq 1 {LINES} > /www/big && echo serving \
             && exec httpd -f -p 127.0.0.1:8080 -h /www"
        );
        pod.create_container(container("web", "img0", &["sh", "-c", &script]))
            .await
            .unwrap();
        pod.start_container("web").await.unwrap();
        let big: String = (1..=LINES).map(|i| format!("{i}\n")).collect();
        let vsock = pod.dir().join("vsock/vsock.sock");
        let id = pod.id().to_owned();
        // One copy of /big through a fresh agent connection: its body, or what went wrong.
        let copy = |port: u16| {
            let (id, vsock) = (id.clone(), vsock.clone());
            async move {
                let agent = vpod_sandbox::PodAgent::connect(&id, &vsock)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (mut mine, theirs) = tokio::io::duplex(64 * 1024);
                let fwd = vpod_sandbox::portforward::forward(&agent, port, theirs);
                // Owns its end: dropped when the answer is read, as a caller closes.
                let talk = async move {
                    mine.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
                    let mut got = Vec::new();
                    let r = mine.read_to_end(&mut got).await;
                    (got, r)
                };
                let (res, (got, r)) = tokio::join!(fwd, talk);
                res.map_err(|e| format!("forward: {e}"))?;
                r.map_err(|e| format!("read: {e}"))?;
                Ok::<_, String>(got)
            }
        };
        // httpd binds right after "serving".
        let t0 = Instant::now();
        while within(&env, "the first copy", copy(8080)).await.is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "httpd never answered"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut bad = Vec::new();
        let mut copies = 0;
        let t0 = Instant::now();
        for round in 0..ROUNDS {
            let (a, b, c) = within(&env, "two copies beside a refused port", async {
                tokio::join!(copy(8080), copy(9999), copy(8080))
            })
            .await;
            assert!(b.is_err(), "round {round}: port 9999 answered");
            let d = within(&env, "a copy alone", copy(8080)).await;
            eprintln!("round {round}: {:?}", t0.elapsed());
            for (what, r) in [("beside", a), ("beside", c), ("after", d)] {
                copies += 1;
                match r.as_ref().map(|g| body(g)) {
                    Ok(Some(b)) if b == big.as_bytes() => {}
                    Ok(Some(b)) => bad.push(format!("{round} {what}: {} bytes", b.len())),
                    Ok(None) => bad.push(format!("{round} {what}: not HTTP")),
                    Err(e) => bad.push(format!("{round} {what}: {e}")),
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {copies} copies broken: {bad:?}; the VM: {:?} {:?}; dmesg: {}; console:\n{}",
            bad.len(),
            pod.vm_exit(),
            std::fs::read_to_string(format!("/proc/{}/status", pod.vmm().pid()))
                .map(|s| s.lines().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|e| e.to_string()),
            String::from_utf8_lossy(
                &Command::new("dmesg")
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n"),
            std::fs::read_to_string(env.dir.join("pod/console.log")).unwrap_or_default()
        );
        pod.shutdown(Duration::from_secs(30)).await;
    });
}

/// The body of an HTTP response, if `resp` is one.
fn body(resp: &[u8]) -> Option<&[u8]> {
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    resp.starts_with(b"HTTP/1.").then(|| &resp[at + 4..])
}
