//! What a pod boots with, and how long its boot took.

use std::path::PathBuf;
use std::time::Duration;

use crate::ephemeral::DEFAULT_EPHEMERAL_BYTES;
use crate::net::PodNet;
use crate::sizing::VmSize;
use crate::vmm_process::VmmProcessConfig;

/// virtio-blk serial of the pod's ephemeral disk.
pub const EPHEMERAL_SERIAL: &str = "eph";
/// Empty slots a pod boots with for images of containers created later.
pub const DEFAULT_SPARE_SLOTS: usize = 2;
/// How long a boot may take before the pod is given up (the test bed's
/// nested, emulated KVM is slow; real KVM boots in tens of ms).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// An image disk to attach.
#[derive(Debug, Clone)]
pub struct ImageDisk {
    /// virtio-blk serial the guest finds it by (at most 20 bytes).
    pub serial: String,
    /// The disk image file (erofs or ext4), attached read-only.
    pub path: PathBuf,
}

/// Everything a pod boots with. [`PodConfig::new`] fills in the defaults; callers change the
/// fields they care about (`PodConfig { vcpus: 2, ..PodConfig::new(...) }`).
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// The pod's id: 1-40 of `[a-z0-9-]`.
    pub id: String,
    /// The pod's state directory (created 0700; must not exist).
    pub dir: PathBuf,
    /// Where the ephemeral disk goes: a directory made for this pod (0700; must not exist;
    /// removed with the pod) on a real disk, since every block the guest writes lands in it.
    /// `None`: in the state directory.
    pub ephemeral_dir: Option<PathBuf>,
    /// The guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// The guest initramfs holding vpod-init.
    pub initrd: PathBuf,
    /// vCPUs of the VM (at least one).
    pub vcpus: u8,
    /// Memory of the VM.
    pub mem_mib: u32,
    /// How much more memory the VM may get later, MiB: a container whose limit the VM can't
    /// hold makes it grow (virtio-mem). 0: never.
    pub hotplug_mib: u32,
    /// Size of the ephemeral disk (sparse): the pod's ephemeral-storage limit.
    pub ephemeral_bytes: u64,
    /// Image disks attached at boot.
    pub images: Vec<ImageDisk>,
    /// Empty slots for images of containers created after boot.
    pub spare_slots: usize,
    /// The guest's hostname (empty: the guest's default).
    pub hostname: String,
    /// How long the boot may take, up to the agent's READY call.
    pub boot_timeout: Duration,
    /// The netns CNI made for the pod: the VM's tap goes there.
    pub net: Option<PodNet>,
    /// How its VMM process is started and jailed.
    pub vmm: VmmProcessConfig,
    /// The pod's namespaced sysctls (securityContext.sysctls; CRI puts them on the sandbox's
    /// spec), written in the pod's namespaces in the guest for each of its containers.
    pub sysctls: std::collections::BTreeMap<String, String>,
}

impl PodConfig {
    /// Pod `id` with its state directory `dir`, booting `kernel` and `initrd`, with the defaults:
    /// sized as a pod without limits ([`VmSize::for_pod`] of none), the default ephemeral disk in
    /// the state directory, no images, [`DEFAULT_SPARE_SLOTS`] empty slots, `id` as hostname,
    /// [`DEFAULT_BOOT_TIMEOUT`], no network.
    pub fn new(
        id: impl Into<String>,
        dir: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> PodConfig {
        let id = id.into();
        let size = VmSize::for_pod(&[], 1);
        PodConfig {
            hostname: id.clone(),
            id,
            dir: dir.into(),
            ephemeral_dir: None,
            kernel: kernel.into(),
            initrd: initrd.into(),
            vcpus: size.vcpus,
            mem_mib: size.mem_mib,
            hotplug_mib: super::memory::DEFAULT_HOTPLUG_MIB,
            ephemeral_bytes: DEFAULT_EPHEMERAL_BYTES,
            images: Vec::new(),
            spare_slots: DEFAULT_SPARE_SLOTS,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            net: None,
            vmm: VmmProcessConfig::default(),
            sysctls: Default::default(),
        }
    }
}

/// How long each boot stage took (host clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    /// The state directory, the ephemeral disk (mkfs) and the slot files.
    pub disk: Duration,
    /// The VMM process: spawn, jail, building and starting the VM.
    pub vm_start: Duration,
    /// Of which the jail's setup inside the VMM.
    pub jail: Duration,
    /// From the VM's start to the agent's READY call and a connected client.
    pub ready: Duration,
    /// The guest mounting its ephemeral disk.
    pub ephemeral_mount: Duration,
}

/// Whether `id` can name a pod: 1-40 of `[a-z0-9-]` (it names directories and threads).
pub fn valid_pod_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
