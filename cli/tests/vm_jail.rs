//! Each pod's VMM in its own jail (issue 14), on real microVMs: what a running `vpod run` pod's
//! VMM process is, seen from the host through /proc and its cgroup; two pods' VMMs can't signal
//! each other; a VMM killed by its seccomp filter ends its pod with that reason. Named `vm_*` so
//! cargo's runner sends it through the test bed when the host's KVM can't run Linux guests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vpod_images::{FsType, Store};
use vpod_sandbox::{ImageDisk, Pod, PodConfig};
use vpod_test_support as common;
use vpod_test_support::jail;

use common::{guest_file, output_text as text};

struct Env {
    dir: PathBuf,
    root: PathBuf,
    run: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("vpod-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root");
        let layout = dir.join("layout");
        common::layout(
            &layout,
            &[common::busybox_layer(vec![])],
            serde_json::json!({"Cmd": ["sh"]}),
        );
        let store = Store::open(&root).unwrap();
        vpod_images::import(&store, &layout, Some("busybox:test")).unwrap();
        Env {
            run: dir.join("run"),
            root,
            dir,
        }
    }

    fn vpod(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vpod"))
            .arg("--root")
            .arg(&self.root)
            .arg("--run-dir")
            .arg(&self.run)
            .args(args)
            .env("VPOD_KERNEL", guest_file("vmlinux"))
            .env("VPOD_INITRD", guest_file("initramfs.cpio"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run_detached(&self) -> String {
        let o = self.vpod(&[
            "run",
            "-d",
            "--memory",
            "128Mi",
            "busybox:test",
            "--",
            "sleep",
            "600",
        ]);
        assert!(o.status.success(), "run -d: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.run.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = self.vpod(&["rm", "-f", &e.file_name().to_string_lossy()]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gone(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what} still there after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vpod_run_pods_get_jailed_vmms_that_cannot_reach_each_other() {
    let env = Env::new("two");
    let a = env.run_detached();
    let b = env.run_detached();
    let (va, vb) = (jail::vmm_of(&a), jail::vmm_of(&b));
    let cg_a = jail::assert_jailed(va, None);
    jail::assert_jailed(vb, None);
    if let Some(dir) = &cg_a {
        // The guest's kernel and init have touched well over 16 MiB of its RAM by now.
        jail::assert_cgroup_holds_guest(dir, 128, 16);
    } else {
        eprintln!("no cgroup v2 on this host: memory.max not checked");
    }
    let (ua, ub) = (jail::uid(va), jail::uid(vb));
    assert_ne!(ua, ub, "two pods' VMMs share a uid");
    assert!(
        !jail::can_signal_as(ua, vb),
        "pod {a}'s uid can signal pod {b}'s VMM"
    );
    assert!(
        !jail::can_signal_as(ub, va),
        "pod {b}'s uid can signal pod {a}'s VMM"
    );
    // The check itself can succeed: a uid signals its own process.
    assert!(
        jail::can_signal_as(ua, va),
        "setpriv kill -0 does not work here"
    );

    for id in [&a, &b] {
        let o = env.vpod(&["rm", "-f", id]);
        assert!(o.status.success(), "rm -f {id}: {}", text(&o));
    }
    gone("a jailed VMM", || {
        jail::find_vmm(&a).is_none() && jail::find_vmm(&b).is_none()
    });
    if let Some(dir) = cg_a {
        gone("the VMM's cgroup", || !dir.exists());
    }
}

/// The test-only VMM build (feature `forbidden-syscall-test`, built by `make test`): it answers a
/// Metrics request with a syscall no seccomp list allows.
fn forbidden_syscall_vmm() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/forbidden-syscall/debug/vpod-vmm");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p vpod-vmm --features forbidden-syscall-test \
         --target-dir target/forbidden-syscall` (make test does)",
        p.display()
    );
    p
}

/// A one-container-image pod of `env`'s busybox, 1 vCPU, 256 MiB, its VMM jailed (defaults).
fn pod_config(env: &Env, name: &str) -> PodConfig {
    let store = Store::open(&env.root).unwrap();
    let d = store.resolve("busybox:test").unwrap();
    let disk = store.ensure_block_image(&d, FsType::detect()).unwrap().path;
    PodConfig {
        vcpus: 1,
        mem_mib: 256,
        ephemeral_bytes: 64 << 20,
        images: vec![ImageDisk {
            serial: "img0".into(),
            path: disk,
        }],
        spare_slots: 0,
        boot_timeout: Duration::from_secs(240),
        ..PodConfig::new(
            name,
            env.dir.join(name),
            guest_file("vmlinux"),
            guest_file("initramfs.cpio"),
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The guest's own poweroff is handled on a vCPU thread, whose teardown (the vsock device
/// removing its socket) must stay within that thread's seccomp list: it once did not, and every
/// jailed pod that powered off was reported as killed by seccomp.
#[test]
fn a_jailed_pod_that_powers_off_ends_with_poweroff_not_a_seccomp_kill() {
    let env = Env::new("poweroff");
    runtime().block_on(async {
        let pod = Pod::boot(pod_config(&env, "poweroff-pod"))
            .await
            .expect("boot");
        let vmm = jail::vmm_of("poweroff-pod");
        jail::assert_jailed(vmm, None);
        let exit = pod.shutdown(Duration::from_secs(120)).await;
        assert_eq!(exit, vpod_vmm::VmExit::Poweroff);
        gone("the VMM", || jail::find_vmm("poweroff-pod").is_none());
    });
}

#[test]
fn a_vmm_killed_by_seccomp_ends_its_pod_with_that_reason() {
    let env = Env::new("sigsys");
    let mut cfg = pod_config(&env, "sigsys-pod");
    cfg.vmm.binary = Some(forbidden_syscall_vmm());
    runtime().block_on(async {
        let pod = Pod::boot(cfg)
            .await
            .expect("the pod boots: the filter is not hit yet");
        let vmm = jail::vmm_of("sigsys-pod");
        let cg = jail::assert_jailed(vmm, None);
        let err = pod.vm_metrics().expect_err("the VMM must be killed");
        let msg = err.to_string();
        assert!(msg.contains("VMM killed by seccomp"), "{msg}");
        let exit = pod.vm_exit().expect("the pod has ended");
        assert!(exit.is_seccomp_kill(), "{exit:?}");
        assert!(jail::find_vmm("sigsys-pod").is_none());
        if let Some(dir) = cg {
            gone("the VMM's cgroup", || !dir.exists());
        }
        drop(pod);
    });
}
