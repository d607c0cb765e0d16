//! Real guest: a virtio-blk slot's backing file is swapped while the guest runs; the guest driver
//! sees the config-change interrupt, re-reads the capacity and reads the new file. Named `vm_*` so
//! cargo's runner sends it through the test bed when the host's KVM can't run Linux guests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpod_test_support::guest_file;
use vpod_vmm::{Console, DiskConfig, VmConfig, VmExit, Vmm};

/// busybox initramfs whose /init is `script`.
fn busybox_initramfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "mount", "cat", "echo", "sleep", "dd", "head", "reboot", "od",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let init = root.join("init");
    std::fs::write(&init, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cpio = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            cpio.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    cpio
}

fn wait_for(log: &Path, needle: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            t0.elapsed() < timeout,
            "no {needle:?} on the console after {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn swap_disk_while_running() {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vpod-swap-").unwrap();
    let dir = dir.as_path();
    let script = r#"
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "SIZE0 $(cat /sys/block/vda/size)"
i=0
while [ "$(cat /sys/block/vda/size)" = "8" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
echo "SIZE1 $(cat /sys/block/vda/size)"
echo "DATA $(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 13)"
reboot -f
"#;
    let initrd = busybox_initramfs(dir, script);
    let empty = dir.join("empty.img");
    std::fs::write(&empty, vec![0u8; 4096]).unwrap();
    let full = dir.join("full.img");
    let mut content = b"SWAPPED-DISK!".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&full, content).unwrap();
    let log = dir.join("console.log");

    let mut config = VmConfig::new(guest_file("vmlinux"));
    config.initrd = Some(initrd);
    config.mem_mib = 128;
    config.console = Console::File(log.clone());
    config.disks.push(DiskConfig {
        path: empty,
        read_only: true,
        id: None,
    });
    let vm = Vmm::start(config).unwrap();
    let stopper = vm.stop_handle();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(600));
        stopper.stop();
    });

    wait_for(&log, "SIZE0 8", Duration::from_secs(300));
    vm.swap_disk(0, &full, None).unwrap();
    let exit = vm.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exit, VmExit::Reboot, "{text}");
    assert!(text.contains("SIZE1 2048"), "{text}");
    assert!(text.contains("DATA SWAPPED-DISK!"), "{text}");
    assert!(vm.swap_disk(1, &full, None).is_err());
    drop(guard);
}
