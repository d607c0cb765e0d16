//! Foundation VM tests: real microVMs booting vpod's guest kernel (`target/guest/vmlinux`) with
//! vpod-init or a busybox script as PID 1. The file name starts with `vm_`, so cargo's runner sends
//! the whole binary through the test bed (one L1 boot) when the host's KVM can't run Linux guests.
//! `make test` builds the guest files first.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use vpod_agent_api::pb::{ShutdownKind, ShutdownRequest};
use vpod_agent_api::{connect_with_retry, ReadyListener, AGENT_VSOCK_PORT};
use vpod_vmm::{Console, DiskConfig, NetConfig, VmConfig, VmExit, Vmm, VsockConfig};

/// Boots are serialised: under the test bed, VMs share two emulated CPUs.
static ONE_VM: Mutex<()> = Mutex::new(());
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

fn one_vm() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM.lock().unwrap_or_else(|e| e.into_inner())
}

use vpod_test_support::guest_file;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vpod-vm-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An initramfs whose /init is busybox running `script` (console on ttyS0).
fn busybox_initramfs(dir: &TempDir, script: &str) -> PathBuf {
    let root = dir.path("bbroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t devtmpfs dev /dev\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nexec </dev/console >/dev/console 2>&1\n{script}\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(root.join("init"))
        .status()
        .unwrap();
    let out = dir.path("bb.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    out
}

fn base_config(initrd: PathBuf, console: &Path) -> VmConfig {
    let mut c = VmConfig::new(guest_file("vmlinux"));
    c.initrd = Some(initrd);
    c.mem_mib = 256;
    c.console = Console::File(console.to_owned());
    c
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn boots_to_the_agent_which_answers_and_powers_off() {
    let _vm = one_vm();
    let dir = TempDir::new("agent");
    let uds = dir.path("vsock.sock");
    let mut cfg = base_config(guest_file("initramfs.cpio"), &dir.path("console.log"));
    cfg.vsock = Some(VsockConfig {
        uds_path: uds.clone(),
        guest_cid: 3,
    });
    cfg.rng = true;
    // Guest-to-host vsock: the guest's READY call arrives on `<uds>_1025`.
    let ready = ReadyListener::bind(&uds).expect("ready socket binds");
    let vm = Vmm::start(cfg).expect("VM starts");
    let rt = runtime();
    rt.block_on(async {
        let ready_ns = ready.wait(AGENT_TIMEOUT).await.unwrap_or_else(|e| {
            panic!(
                "no READY call from the guest: {e}\nconsole:\n{}",
                read(&dir.path("console.log"))
            )
        });
        // Host-to-guest vsock: the agent's gRPC port.
        let mut agent = connect_with_retry(&uds, AGENT_VSOCK_PORT, AGENT_TIMEOUT)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "agent not ready: {e}\nconsole:\n{}",
                    read(&dir.path("console.log"))
                )
            });
        let v = agent
            .version(vpod_agent_api::pb::VersionRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            v.kernel_release.contains("vpod"),
            "kernel release {}",
            v.kernel_release
        );
        let p = agent
            .ping(vpod_agent_api::pb::PingRequest { token: 0xfeed })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.token, 0xfeed);
        let t = agent
            .boot_times(vpod_agent_api::pb::BootTimesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(t.init_start_boottime_ns > 0);
        assert!(t.agent_listening_boottime_ns >= t.init_start_boottime_ns);
        assert_eq!(
            ready_ns, t.agent_listening_boottime_ns,
            "the READY call carries the agent-listening time"
        );
        agent
            .shutdown(ShutdownRequest {
                kind: ShutdownKind::Poweroff as i32,
            })
            .await
            .unwrap();
    });
    assert_eq!(vm.wait(), VmExit::Poweroff);
    assert!(!uds.exists(), "the vsock socket file outlived the VM");
    drop(ready);
}

#[test]
fn guest_writes_a_disk_the_host_reads_and_a_read_only_disk_refuses_writes() {
    let _vm = one_vm();
    let dir = TempDir::new("disk");
    let rw = dir.path("rw.img");
    let ro = dir.path("ro.img");
    std::fs::File::create(&rw)
        .unwrap()
        .set_len(8 << 20)
        .unwrap(); // sparse
    let mut ro_content = b"READ-ONLY-PAYLOAD".to_vec();
    ro_content.resize(1 << 20, 0);
    std::fs::write(&ro, &ro_content).unwrap();
    let script = r#"
cat /sys/block/vda/ro /sys/block/vdb/ro | tr '\n' ' ' | sed 's/^/RO_FLAGS: /'; echo
echo -n GUEST-WROTE-THIS | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null && echo RW_WRITE_DONE
echo "RO_READ: $(head -c 17 /dev/vdb)"
if echo x | dd of=/dev/vdb conv=fsync 2>/dev/null; then echo RO_WRITE_ACCEPTED; else echo RO_WRITE_REFUSED; fi
cat /sys/block/vdb/serial 2>/dev/null | sed 's/^/VDB_SERIAL: /'
sync
echo DISK_TEST_DONE
reboot -f
"#;
    let initrd = busybox_initramfs(&dir, script);
    let console = dir.path("console.log");
    let mut cfg = base_config(initrd, &console);
    cfg.disks = vec![
        DiskConfig {
            path: rw.clone(),
            read_only: false,
            id: Some("rw-disk".into()),
        },
        DiskConfig {
            path: ro.clone(),
            read_only: true,
            id: Some("ro-disk".into()),
        },
    ];
    let vm = Vmm::start(cfg).expect("VM starts");
    let exit = vm.wait();
    let log = read(&console);
    assert_eq!(exit, VmExit::Reboot, "console:\n{log}");
    assert!(log.contains("DISK_TEST_DONE"), "console:\n{log}");
    assert!(log.contains("RO_FLAGS: 0 1"), "console:\n{log}");
    assert!(log.contains("RW_WRITE_DONE"), "console:\n{log}");
    assert!(
        log.contains("RO_READ: READ-ONLY-PAYLOAD"),
        "console:\n{log}"
    );
    assert!(log.contains("RO_WRITE_REFUSED"), "console:\n{log}");
    assert!(log.contains("VDB_SERIAL: ro-disk"), "console:\n{log}");
    let mut buf = [0u8; 16];
    std::fs::File::open(&rw)
        .unwrap()
        .read_exact_at(&mut buf, 8 * 512)
        .unwrap();
    assert_eq!(&buf, b"GUEST-WROTE-THIS");
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_content,
        "the read-only disk changed"
    );
}

/// Runs the vpod-vmm binary to its end and returns (exit status, console).
fn run_cli(dir: &TempDir, initrd: &Path, extra: &[&str]) -> (i32, String) {
    let console = dir.path("cli-console.log");
    let _ = std::fs::remove_file(&console);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vpod-vmm"));
    cmd.arg("--kernel")
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(initrd)
        .args(["--vcpus", "1", "--mem-mib", "256", "--console"])
        .arg(&console)
        .args(extra)
        .stdin(Stdio::null());
    let status = cmd.status().expect("spawn vpod-vmm");
    (status.code().unwrap_or(-1), read(&console))
}

#[test]
fn reboot_panic_and_poweroff_give_their_own_exit_status() {
    let _vm = one_vm();
    let dir = TempDir::new("exits");
    let reboot = busybox_initramfs(&dir, "echo REBOOTING; reboot -f");
    let (code, log) = run_cli(&dir, &reboot, &[]);
    assert_eq!(code, 3, "reboot -> 3; console:\n{log}");

    let dir2 = TempDir::new("exits-panic");
    // PID 1 exiting panics the kernel ("Attempted to kill init"); panic=-1 resets at once.
    let panic = busybox_initramfs(&dir2, "echo DYING; exit 1");
    let (code, log) = run_cli(&dir2, &panic, &[]);
    assert_eq!(code, 4, "panic -> 4; console:\n{log}");
    assert!(log.contains("Kernel panic"), "console:\n{log}");

    // Poweroff through the agent (vpod-init picks the CF9 reset line, then reboots).
    let dir3 = TempDir::new("exits-poweroff");
    let uds = dir3.path("v.sock");
    let uds_arg = uds.to_str().unwrap().to_owned();
    let child = std::thread::spawn({
        let initrd = guest_file("initramfs.cpio");
        move || run_cli(&dir3, &initrd, &["--vsock", &uds_arg])
    });
    runtime().block_on(async {
        let mut agent = connect_with_retry(&uds, AGENT_VSOCK_PORT, AGENT_TIMEOUT)
            .await
            .expect("agent ready");
        agent
            .shutdown(ShutdownRequest {
                kind: ShutdownKind::Poweroff as i32,
            })
            .await
            .unwrap();
    });
    let (code, log) = child.join().unwrap();
    assert_eq!(code, 0, "poweroff -> 0; console:\n{log}");
}

#[test]
fn guest_eth0_reaches_the_host_side_of_its_tap() {
    let _vm = one_vm();
    let dir = TempDir::new("net");
    let ns = format!("vpodt{}", std::process::id());
    let tap = "vpodtap0";
    let sh = |s: &str| {
        let st = Command::new("sh").arg("-c").arg(s).status().unwrap();
        assert!(st.success(), "host setup failed: {s}");
    };
    sh(&format!("ip netns add {ns}"));
    struct NsGuard(String);
    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _guard = NsGuard(ns.clone());
    sh(&format!(
        "ip -n {ns} tuntap add dev {tap} mode tap vnet_hdr && ip -n {ns} addr add 10.77.0.1/24 dev {tap} \
         && ip -n {ns} link set {tap} up && ip -n {ns} link set lo up"
    ));
    let script = r#"
ip link set lo up; ip link set eth0 up; ip addr add 10.77.0.2/24 dev eth0
cat /sys/class/net/eth0/address | sed 's/^/ETH0_MAC: /'
if ping -c 3 -W 10 10.77.0.1; then echo NET_PING_OK; else echo NET_PING_FAILED; fi
reboot -f
"#;
    let initrd = busybox_initramfs(&dir, script);
    // The VMM opens the tap by name in its own netns: run it in the test's netns.
    let console = dir.path("console.log");
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_vpod-vmm"),
            "--kernel",
        ])
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--vcpus",
            "1",
            "--mem-mib",
            "256",
            "--net",
            tap,
            "--console",
        ])
        .arg(&console)
        .status()
        .unwrap();
    let log = read(&console);
    assert_eq!(status.code(), Some(3), "console:\n{log}");
    assert!(log.contains("NET_PING_OK"), "console:\n{log}");
    // the tap is the test's (persistent); the VMM left it as it found it
    sh(&format!("ip -n {ns} link show {tap} >/dev/null"));
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn children_of_self() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.split_whitespace().nth(1) == Some(&me))
                })
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn twenty_boots_in_a_row_leave_nothing_behind() {
    let _vm = one_vm();
    let dir = TempDir::new("leaks");
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let rt = runtime();
    let boot = |i: usize| {
        let uds = dir.path(&format!("v{i}.sock"));
        let mut cfg = base_config(guest_file("initramfs.cpio"), &dir.path("console.log"));
        cfg.vsock = Some(VsockConfig {
            uds_path: uds.clone(),
            guest_cid: 3,
        });
        cfg.rng = true;
        cfg.disks = vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
            id: None,
        }];
        // The VMM creates this tap (it doesn't exist): it must vanish with the VM.
        cfg.net = Some(NetConfig {
            tap: "vpodleak0".into(),
            mac: None,
        });
        let t0 = std::time::Instant::now();
        let vm = Vmm::start(cfg).unwrap_or_else(|e| panic!("boot {i}: {e}"));
        rt.block_on(async {
            let mut agent = connect_with_retry(&uds, AGENT_VSOCK_PORT, AGENT_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("boot {i}: agent: {e}"));
            agent
                .shutdown(ShutdownRequest {
                    kind: ShutdownKind::Poweroff as i32,
                })
                .await
                .unwrap();
        });
        assert_eq!(vm.wait(), VmExit::Poweroff, "boot {i}");
        eprintln!("boot {i}: start to poweroff {:?}", t0.elapsed());
    };
    // One boot first, so lazily created process-wide things (runtime threads, logging) are there.
    boot(0);
    let (fds, threads, files) = (
        count("/proc/self/fd"),
        count("/proc/self/task"),
        count(dir.0.to_str().unwrap()),
    );
    for i in 1..=20 {
        boot(i);
    }
    assert_eq!(count("/proc/self/fd"), fds, "fds leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
    assert_eq!(
        count(dir.0.to_str().unwrap()),
        files,
        "files left in the VM dir"
    );
    assert!(
        !Path::new("/sys/class/net/vpodleak0").exists(),
        "tap left behind"
    );
    assert_eq!(children_of_self(), 0, "child processes left");
}

/// virtio-mem: a guest booted with 256 MiB gets 256 MiB more when the host asks, onlines it
/// (MemTotal grows) and the device counts it plugged; what was never asked for stays out.
#[test]
fn the_host_plugs_memory_into_a_running_guest() {
    let _vm = one_vm();
    let dir = TempDir::new("hotplug");
    let script = r#"
total() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
before=$(total)
echo "MEM_BEFORE $before"
i=0
while [ $i -lt 600 ]; do
  now=$(total)
  if [ "$now" -gt $((before + 200 * 1024)) ]; then
    echo "MEM_GREW $before $now"
    break
  fi
  i=$((i + 1)); sleep 0.2
done
echo "MEM_AFTER $(total)"
reboot -f
"#;
    let initrd = busybox_initramfs(&dir, script);
    let console = dir.path("console.log");
    let mut cfg = base_config(initrd, &console);
    cfg.hotplug_mib = 1024;
    let vm = Vmm::start(cfg).expect("VM starts");
    let t0 = std::time::Instant::now();
    while !read(&console).contains("MEM_BEFORE") {
        assert!(
            t0.elapsed() < AGENT_TIMEOUT,
            "the guest never started:\n{}",
            read(&console)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(vm.hotplug().region_bytes, 1 << 30);
    assert_eq!(vm.request_hotplug(256 << 20).unwrap(), 256 << 20);
    assert!(
        vm.request_hotplug(2 << 30).is_err(),
        "more than the region holds"
    );
    let exit = vm.wait();
    let log = read(&console);
    assert_eq!(exit, VmExit::Reboot, "console:\n{log}");
    assert!(log.contains("MEM_GREW"), "MemTotal did not grow:\n{log}");
    let state = vm.hotplug();
    assert_eq!(state.requested_bytes, 256 << 20);
    assert_eq!(state.plugged_bytes, 256 << 20, "console:\n{log}");
}
