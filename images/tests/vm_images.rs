//! An image's erofs block image, attached read-only to a microVM whose busybox init mounts it
//! and reads files from it. The file name starts with `vm_`: cargo's runner sends this binary
//! through the test bed when the host's KVM can't run Linux guests. `make test` builds the
//! guest kernel first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vpod_images::{import, FsType, Store};
use vpod_vmm::{Console, DiskConfig, VmConfig, VmExit, Vmm};

use vpod_test_support::guest_file;

/// An initramfs whose /init is busybox running `script` (console on ttyS0).
fn busybox_initramfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("bbroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["dev", "proc", "sys", "mnt"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t devtmpfs dev /dev\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nexec </dev/console >/dev/console 2>&1\n{script}\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    let st = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.join("bb.cpio");
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

#[test]
fn guest_mounts_the_erofs_image_and_reads_its_files() {
    let t = TempDir::new("vm");
    let layout = t.path("layout");
    let md = write_layout(&layout, &busybox_layers(), Compression::Gzip, "vm");
    let store = Store::open(&t.path("root")).unwrap();
    import(&store, &layout, None).unwrap();
    let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
    let before = std::fs::read(&img.path).unwrap();

    let script = r#"
if mount -t erofs -o ro /dev/vda /mnt; then echo MOUNTED; else echo MOUNT_FAILED; fi
echo "HELLO: $(cat /mnt/etc/hello.txt)"
echo "OWNED: $(stat -c '%u:%g:%a' /mnt/work/owned)"
echo "RUN: $(/mnt/bin/busybox echo busybox-from-the-image-runs)"
if touch /mnt/etc/new 2>/dev/null; then echo WRITE_ACCEPTED; else echo WRITE_REFUSED; fi
echo VM_IMAGES_DONE
reboot -f
"#;
    let initrd = busybox_initramfs(&t.0, script);
    let console = t.path("console.log");
    let mut cfg = VmConfig::new(guest_file("vmlinux"));
    cfg.initrd = Some(initrd);
    cfg.mem_mib = 256;
    cfg.console = Console::File(console.clone());
    cfg.disks = vec![DiskConfig {
        path: img.path.clone(),
        read_only: true,
        id: Some(format!("image-{}", md.short())),
    }];
    let vm = Vmm::start(cfg).expect("VM starts");
    let exit = vm.wait();
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    assert_eq!(exit, VmExit::Reboot, "console:\n{log}");
    assert!(log.contains("VM_IMAGES_DONE"), "console:\n{log}");
    assert!(log.contains("MOUNTED"), "console:\n{log}");
    assert!(
        log.contains("HELLO: HELLO-FROM-AN-EROFS-IMAGE"),
        "console:\n{log}"
    );
    assert!(log.contains("OWNED: 1000:1000:640"), "console:\n{log}");
    assert!(
        log.contains("RUN: busybox-from-the-image-runs"),
        "console:\n{log}"
    );
    assert!(log.contains("WRITE_REFUSED"), "console:\n{log}");
    assert_eq!(
        std::fs::read(&img.path).unwrap(),
        before,
        "the image changed"
    );
}
