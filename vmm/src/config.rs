//! What a VM should look like. Plain data, validated once before anything is created.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout;

/// Smallest guest we agree to build: the kernel is loaded at 16 MiB and needs room above it.
pub const MIN_MEM_MIB: u32 = 32;
/// KVM's usual soft limit; also what fits in the 8-bit xAPIC ids we hand out.
pub const MAX_VCPUS: u8 = 254;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Console {
    /// Output is discarded (the serial port still exists: the kernel keeps `console=ttyS0` so a
    /// panic can still be detected on the byte stream).
    Off,
    /// Copied to the VMM's stdout.
    Stdout,
    /// Appended to a file (capped: [`VmConfig::console_limit`]).
    File(PathBuf),
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The backing file (a raw image; sparse is fine).
    pub path: PathBuf,
    /// Offer the disk read-only (VIRTIO_BLK_F_RO); the file is opened read-only too.
    pub read_only: bool,
    /// Device id string the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub id: Option<String>,
}

/// A virtio-net NIC on a host tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap interface (created if missing, which needs CAP_NET_ADMIN).
    pub tap: String,
    /// The guest NIC's MAC address (VIRTIO_NET_F_MAC); the guest picks one without it.
    pub mac: Option<[u8; 6]>,
}

/// A virtio-vsock device; the host side is unix sockets (see `devices::virtio::vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The unix socket host processes connect to (`CONNECT <port>`); guest connections to host
    /// port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The guest's CID (3 or more).
    pub guest_cid: u64,
}

/// Default guest CID of the vsock device.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// What a VM is made of; [`VmConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux with a PVH entry note.
    pub kernel: PathBuf,
    /// An initramfs (cpio) loaded for the kernel.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended after the defaults (see [`crate::builder`]).
    pub cmdline: Option<String>,
    /// Keep the kernel's boot messages (drop `quiet` from the default command line).
    pub verbose_kernel: bool,
    /// vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Guest RAM in MiB (at least [`MIN_MEM_MIB`]).
    pub mem_mib: u32,
    /// Memory the host may plug in later, in MiB (a virtio-mem device; 0: none). Rounded up to
    /// 128 MiB; none of it is in use (or costs host memory) until the host asks for it.
    #[serde(default)]
    pub hotplug_mib: u32,
    /// Disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// A NIC, if any.
    pub net: Option<NetConfig>,
    /// A vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Add a virtio-rng device (entropy from the host's getrandom).
    pub rng: bool,
    /// Where the serial console goes.
    pub console: Console,
    /// Largest size, in bytes, a [`Console::File`] may reach: the guest writes it, so it is capped
    /// (output past the cap is dropped and counted in the metrics' `console_bytes_dropped`).
    pub console_limit: u64,
}

/// Default [`VmConfig::console_limit`]: 1 MiB.
pub const DEFAULT_CONSOLE_LIMIT: u64 = 1 << 20;

impl VmConfig {
    /// A config with one vCPU, 128 MiB, no devices, console off.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            verbose_kernel: false,
            vcpus: 1,
            mem_mib: 128,
            hotplug_mib: 0,
            disks: Vec::new(),
            net: None,
            vsock: None,
            rng: false,
            console: Console::Off,
            console_limit: DEFAULT_CONSOLE_LIMIT,
        }
    }

    /// Number of virtio-mmio slots this config needs.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + usize::from(self.net.is_some())
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
            + usize::from(self.hotplug_mib > 0)
    }

    /// The hotplug region's size in bytes (0: none): [`VmConfig::hotplug_mib`] rounded up to
    /// whole Linux memory blocks.
    pub fn hotplug_bytes(&self) -> u64 {
        (u64::from(self.hotplug_mib) << 20)
            .next_multiple_of(crate::devices::virtio::mem::device::REGION_ALIGN)
    }

    /// Checks what can be checked before anything is created (files exist, limits, names).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_file(&self.kernel, "kernel")?;
        if let Some(initrd) = &self.initrd {
            check_file(initrd, "initrd")?;
        }
        for disk in &self.disks {
            check_file(&disk.path, "disk")?;
        }
        self.check_limits()
    }

    /// [`validate`](Self::validate) without the files: what the builder checks once they are open
    /// (a jailed VMM no longer sees their paths).
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.vcpus, MAX_VCPUS));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::TooLittleMemory(self.mem_mib, MIN_MEM_MIB));
        }
        if u64::from(self.mem_mib) << 20 > layout::MAX_GUEST_MEM {
            return Err(ConfigError::TooMuchMemory(self.mem_mib));
        }
        if (u64::from(self.mem_mib) << 20) + self.hotplug_bytes() > layout::MAX_GUEST_MEM {
            return Err(ConfigError::TooMuchMemory(
                self.mem_mib.saturating_add(self.hotplug_mib),
            ));
        }
        let slots = layout::VIRTIO_MMIO_SLOTS;
        if self.virtio_device_count() > slots {
            return Err(ConfigError::TooManyDevices(
                self.virtio_device_count(),
                slots,
            ));
        }
        for disk in &self.disks {
            if let Some(id) = &disk.id {
                if id.len() > 20 {
                    return Err(ConfigError::DiskIdTooLong(id.clone()));
                }
            }
        }
        if let Some(net) = &self.net {
            if net.tap.is_empty() || net.tap.len() >= libc::IFNAMSIZ {
                return Err(ConfigError::BadTapName(net.tap.clone()));
            }
        }
        if let Some(vsock) = &self.vsock {
            // CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
            if vsock.guest_cid < 3 || vsock.guest_cid >= u64::from(u32::MAX) {
                return Err(ConfigError::BadCid(vsock.guest_cid));
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return Err(ConfigError::BadVsockPath);
            }
        }
        if let Some(cmdline) = &self.cmdline {
            if cmdline.contains('\0') {
                return Err(ConfigError::BadCmdline);
            }
        }
        Ok(())
    }
}

fn check_file(path: &Path, what: &'static str) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::NotAFile(what, path.to_path_buf())),
        Err(e) => Err(ConfigError::Missing(what, path.to_path_buf(), e)),
    }
}

/// Why a [`VmConfig`] can't be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file (what, path) can't be opened.
    #[error("{0} {1}: {2}")]
    Missing(&'static str, PathBuf, #[source] std::io::Error),
    /// A path (what, path) is not a regular file.
    #[error("{0} {1}: not a regular file")]
    NotAFile(&'static str, PathBuf),
    /// `vcpus` is 0.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// `vcpus` (asked, maximum) is over the limit.
    #[error("{0} vCPUs requested, at most {1} supported")]
    TooManyVcpus(u8, u8),
    /// `mem_mib` (asked, minimum) is too small.
    #[error("{0} MiB of guest memory is too little (minimum {1} MiB)")]
    TooLittleMemory(u32, u32),
    /// `mem_mib` is larger than the memory layout allows.
    #[error("{0} MiB of guest memory is more than supported")]
    TooMuchMemory(u32),
    /// More virtio devices (asked, slots) than the MMIO window holds.
    #[error("{0} virtio devices requested but the MMIO window has {1} slots")]
    TooManyDevices(usize, usize),
    /// A disk id longer than GET_ID's 20 bytes.
    #[error("disk id {0:?} is longer than 20 bytes")]
    DiskIdTooLong(String),
    /// An empty tap name, or one longer than an interface name can be.
    #[error("bad tap interface name {0:?}")]
    BadTapName(String),
    /// A reserved or out-of-range guest CID.
    #[error("guest CID {0} is reserved or out of range (3..2^32-1)")]
    BadCid(u64),
    /// An empty vsock socket path.
    #[error("vsock unix socket path is empty")]
    BadVsockPath,
    /// A NUL byte in the extra command line.
    #[error("kernel command line contains a NUL byte")]
    BadCmdline,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file() -> vmm_sys_util::tempfile::TempFile {
        vmm_sys_util::tempfile::TempFile::new().unwrap()
    }

    #[test]
    fn validation_errors() {
        let k = kernel_file();
        let mut c = VmConfig::new(k.as_path());
        c.validate().unwrap();

        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoVcpus)));
        c.vcpus = 1;

        c.mem_mib = 16;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooLittleMemory(16, 32))
        ));
        c.mem_mib = 64;

        c.initrd = Some("/nonexistent/initrd".into());
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().starts_with("initrd /nonexistent/initrd"),
            "{e}"
        );
        c.initrd = None;

        c.kernel = "/".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotAFile("kernel", _))
        ));
        c.kernel = k.as_path().into();

        for _ in 0..=layout::VIRTIO_MMIO_SLOTS {
            c.disks.push(DiskConfig {
                path: k.as_path().into(),
                read_only: true,
                id: None,
            });
        }
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices(_, _))
        ));
        c.disks.truncate(1);
        c.validate().unwrap();
        c.disks[0].id = Some("x".repeat(21));
        assert!(matches!(c.validate(), Err(ConfigError::DiskIdTooLong(_))));
        c.disks.clear();

        c.vsock = Some(VsockConfig {
            uds_path: "/tmp/v.sock".into(),
            guest_cid: 2,
        });
        assert!(matches!(c.validate(), Err(ConfigError::BadCid(2))));
    }
}
