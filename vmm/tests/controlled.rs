//! `vpod-vmm --control-fd`: a jailed, seccomp-filtered VMM process driven over its control
//! channel, with tiny hand-made guests (runs on the host: needs root and /dev/kvm, no real
//! kernel). The pod-level checks with a real guest are in the sandbox's, shim's and CLI's VM tests.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpod_jail::spawn::{Namespaces, PassFd};
use vpod_jail::{Bind, JailSpec};
use vpod_vmm::control::{self, Control, HostMessage, Launch, SeccompMode, VmmMessage};
use vpod_vmm::{Console, VmConfig, VmExit};

fn root() -> bool {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root");
        return false;
    }
    common::kvm_available()
}

/// `hlt; jmp $-1`: a guest that idles until stopped.
const IDLE: &[u8] = &[0xf4, 0xeb, 0xfd];

struct Started {
    child: Child,
    ctl: Control,
    root: tempdir::Dir,
    _kernel: vmm_sys_util::tempfile::TempFile,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn start(code: &[u8], uid: u32) -> Started {
    let kernel = common::pvh_elf(code);
    let mut vm = VmConfig::new(kernel.as_path());
    vm.mem_mib = 64;
    vm.console = Console::Off;
    let root = tempdir::Dir(
        std::env::temp_dir().join(format!("vpod-vmm-jail-{}-{uid}", std::process::id())),
    );
    let mut spec = JailSpec::new(&root.0, uid, uid);
    spec.binds = vec![Bind::kvm()];
    let (host, vmm) = control::pair().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vpod-vmm"));
    cmd.args(["--control-fd", "3"]).stdin(Stdio::null());
    // SAFETY: fcntl makes a new fd; the original `vmm` end is dropped after the spawn.
    let high = unsafe { libc::fcntl(vmm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    assert!(high >= 64);
    vpod_jail::spawn::configure(
        &mut cmd,
        Namespaces::default(),
        &[PassFd { src: high, dst: 3 }],
    )
    .unwrap();
    let child = cmd.spawn().unwrap();
    // SAFETY: `high` is ours and no longer needed here.
    unsafe { libc::close(high) };
    drop(vmm);
    host.send(
        &HostMessage::Launch(Box::new(Launch {
            vm,
            jail: Some(spec),
            netns: None,
            seccomp: SeccompMode::Enforce,
        })),
        &[],
    )
    .unwrap();
    Started {
        child,
        ctl: host,
        root,
        _kernel: kernel,
    }
}

fn next(ctl: &Control) -> VmmMessage {
    assert!(
        ctl.wait_readable(Duration::from_secs(30)).unwrap(),
        "no message from the VMM within 30 s"
    );
    ctl.recv::<VmmMessage>().unwrap().0
}

/// The jailed VMM: the only child of the waiter the host spawned.
fn jailed_pid(waiter: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{waiter}/task/{waiter}/children"))
            .unwrap_or_default();
        if let Some(p) = kids.split_whitespace().next() {
            return p.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the waiter has no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[test]
fn jailed_vmm_runs_a_guest_to_its_poweroff() {
    if !root() {
        return;
    }
    let mut s = start(common::POWEROFF, 100_000_901);
    match next(&s.ctl) {
        VmmMessage::Started { pid_in_jail, .. } => assert_eq!(pid_in_jail, 1),
        other => panic!("expected Started, got {other:?}"),
    }
    // The guest may be gone before we look; what it said is the point here.
    let mut exit = None;
    while exit.is_none() {
        if let VmmMessage::Exited { exit: e, metrics } = next(&s.ctl) {
            assert!(metrics.start_to_first_kvm_run_us.is_some());
            exit = Some(e);
        }
    }
    assert_eq!(exit, Some(VmExit::Poweroff));
    assert!(s.child.wait().unwrap().success());
    assert!(
        !s.root.0.join("dev").exists(),
        "the root's tmpfs was the VMM's own"
    );
}

#[test]
fn jailed_vmm_is_unprivileged_filtered_and_answers() {
    if !root() {
        return;
    }
    let uid = 100_000_902;
    let mut s = start(IDLE, uid);
    assert!(matches!(next(&s.ctl), VmmMessage::Started { .. }));
    let pid = jailed_pid(s.child.id());
    assert_eq!(
        status_field(pid, "Uid:").split_whitespace().next(),
        Some(uid.to_string().as_str())
    );
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns} namespace shared with the host");
    }
    let listed: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        vec!["dev".to_string()],
        "the root holds only /dev/kvm"
    );

    s.ctl.send(&HostMessage::Metrics, &[]).unwrap();
    assert!(matches!(next(&s.ctl), VmmMessage::Metrics { .. }));
    // A request the VMM can't do is refused, not fatal.
    s.ctl
        .send(&HostMessage::SwapDisk { index: 7, id: None }, &[])
        .unwrap();
    assert!(matches!(next(&s.ctl), VmmMessage::Refused { .. }));
    s.ctl.send(&HostMessage::Stop, &[]).unwrap();
    loop {
        if let VmmMessage::Exited { exit, .. } = next(&s.ctl) {
            assert_eq!(exit, VmExit::Stopped);
            break;
        }
    }
    assert!(s.child.wait().unwrap().success());
}

#[test]
fn vmm_dies_with_its_host_channel() {
    if !root() {
        return;
    }
    let mut s = start(IDLE, 100_000_903);
    assert!(matches!(next(&s.ctl), VmmMessage::Started { .. }));
    // The host is gone: the VM is stopped and the process ends.
    drop(std::mem::replace(&mut s.ctl, control::pair().unwrap().0));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VMM outlived its host's channel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
