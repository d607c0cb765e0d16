//! The shim's configuration: a TOML file named by containerd's runtime
//! options (`ConfigPath`, as Kata's shim takes it), else the environment,
//! else the paths `make install` uses.
//!
//! containerd's CRI plugin decodes `[...runtimes.vpod.options]` into its
//! generic `runtimeoptions.v1.Options` and hands it to every task Create;
//! `ctr run --runtime-config-path` does the same.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vpod_images::UnpackLimits;
use vpod_sandbox::VmmProcessConfig;

/// Where a pod's state dirs go.
const STATE_ROOT: &str = "/run/vpod/shim";
/// Where a pod's ephemeral disk goes: a real disk, not /run's tmpfs (host RAM).
const EPHEMERAL_ROOT: &str = "/var/lib/vpod/shim-ephemeral";
/// Built rootfs disks, keyed by their snapshot dirs.
const ROOTFS_CACHE: &str = "/var/lib/vpod/shim-rootfs";
const KERNEL: &str = "/var/lib/vpod/guest/vmlinux";
const INITRD: &str = "/var/lib/vpod/guest/initramfs.cpio";
const KUBELET_ROOT: &str = "/var/lib/kubelet";
const EPHEMERAL_MIB: u64 = 1024;
/// vpod-images' bound on an image's unpacked size (10 GiB), in MiB: the shim's images are held
/// to what `vpod image import` allows by default.
const MAX_IMAGE_SIZE_MIB: u64 = UnpackLimits::DEFAULT.max_bytes >> 20;
/// The largest `max_image_size_mib` whose byte count fits a u64.
const MAX_IMAGE_SIZE_MIB_CEILING: u64 = u64::MAX >> 20;

/// `type_url` containerd gives its generic runtime options.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// containerd's `runtimeoptions.v1.Options` (pkg/runtimeoptions/v1): the
/// options any non-runc runtime gets. Declared here, three fields, since no
/// published crate carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeOptions {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    config_path: String,
    /// The options as inline TOML (containerd 1.7+).
    #[prost(bytes = "vec", tag = "3")]
    config_body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("runtime options ({type_url}): {source}")]
    Options {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("read the shim config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shim config {origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("shim config {origin}: {what}")]
    Invalid { origin: String, what: String },
}

/// What a shim needs to boot pods; every field has a default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    /// The guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// The guest initramfs with vpod-init.
    pub initrd: PathBuf,
    /// vCPUs of a pod VM whose containers declare no CPU limit (a CRI
    /// sandbox boots before its containers are known).
    pub default_vcpus: u8,
    /// Memory of such a pod VM, guest overhead included.
    pub default_memory_mib: u32,
    /// How much a pod VM may grow (virtio-mem) when a container created later has a memory
    /// limit the VM can't hold; 0: never.
    pub hotplug_memory_mib: u32,
    /// Size limit of each pod's ephemeral disk.
    pub ephemeral_storage_mib: u64,
    /// Pod state dirs (image slots, VM sockets, console).
    pub state_dir: PathBuf,
    /// Pods' ephemeral disks, one dir per pod (on a real disk: every block a guest writes).
    pub ephemeral_dir: PathBuf,
    /// Cached erofs disks of container rootfs snapshots.
    pub rootfs_cache: PathBuf,
    /// kubelet's `--root-dir`: where its volume dirs are recognized.
    pub kubelet_root: PathBuf,
    /// containerd's `root` and `state` dirs: where a sandbox's hosts, hostname and
    /// resolv.conf are recognized.
    pub containerd_dirs: Vec<PathBuf>,
    /// Largest size of a container image's layers (all of them together, files a later layer
    /// replaces included) the shim builds a rootfs disk from.
    pub max_image_size_mib: u64,
    /// Most entries (files, dirs, links) those layers may hold together.
    pub max_image_entries: u64,
    /// How each pod's VMM process is started and jailed: the `[vmm]` table. TOML has no null:
    /// `cgroup_parent = ""` means no cgroup of its own.
    pub vmm: VmmProcessConfig,
}

impl Default for ShimConfig {
    fn default() -> Self {
        let size = vpod_sandbox::VmSize::for_pod(&[], 1);
        ShimConfig {
            kernel: KERNEL.into(),
            initrd: INITRD.into(),
            default_vcpus: size.vcpus,
            default_memory_mib: size.mem_mib,
            hotplug_memory_mib: vpod_sandbox::DEFAULT_HOTPLUG_MIB,
            ephemeral_storage_mib: EPHEMERAL_MIB,
            state_dir: STATE_ROOT.into(),
            ephemeral_dir: EPHEMERAL_ROOT.into(),
            rootfs_cache: ROOTFS_CACHE.into(),
            kubelet_root: KUBELET_ROOT.into(),
            containerd_dirs: vpod_sandbox::mounts::DEFAULT_CONTAINERD_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            max_image_size_mib: MAX_IMAGE_SIZE_MIB,
            max_image_entries: UnpackLimits::DEFAULT.max_entries,
            vmm: VmmProcessConfig::default(),
        }
    }
}

impl ShimConfig {
    /// The config for a task Create's `options` (containerd's `Any`).
    pub fn resolve(type_url: &str, value: &[u8]) -> Result<ShimConfig, ConfigError> {
        let mut c = ShimConfig::default();
        if type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
            let o = <RuntimeOptions as prost::Message>::decode(value).map_err(|source| {
                ConfigError::Options {
                    type_url: type_url.into(),
                    source,
                }
            })?;
            if !o.config_path.is_empty() {
                c = ShimConfig::load(Path::new(&o.config_path))?;
            } else if !o.config_body.is_empty() {
                c = ShimConfig::parse(
                    &String::from_utf8_lossy(&o.config_body),
                    "in the runtime options",
                )?;
            }
        } else if !type_url.is_empty() {
            log::warn!("runtime options of type {type_url} ignored");
        }
        c.apply_env();
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<ShimConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        ShimConfig::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<ShimConfig, ConfigError> {
        let mut c: ShimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.into(),
            source: Box::new(e),
        })?;
        let invalid = |what: &str| ConfigError::Invalid {
            origin: origin.into(),
            what: what.into(),
        };
        if c.default_vcpus == 0 {
            return Err(invalid("default_vcpus must be at least 1"));
        }
        if (c.default_memory_mib as u64) < vpod_sandbox::sizing::GUEST_OVERHEAD_MIB * 2 {
            return Err(invalid(&format!(
                "default_memory_mib {} is below twice the guest's own {} MiB",
                c.default_memory_mib,
                vpod_sandbox::sizing::GUEST_OVERHEAD_MIB
            )));
        }
        if c.ephemeral_storage_mib == 0 {
            return Err(invalid("ephemeral_storage_mib must be at least 1"));
        }
        if !(1..=MAX_IMAGE_SIZE_MIB_CEILING).contains(&c.max_image_size_mib) {
            return Err(invalid(&format!(
                "max_image_size_mib {} must be between 1 and {MAX_IMAGE_SIZE_MIB_CEILING}",
                c.max_image_size_mib
            )));
        }
        if c.max_image_entries == 0 {
            return Err(invalid("max_image_entries must be at least 1"));
        }
        if c.vmm.cgroup_parent.as_deref() == Some(Path::new("")) {
            c.vmm.cgroup_parent = None;
        }
        check_vmm(&c.vmm).map_err(|what| invalid(&what))?;
        Ok(c)
    }

    /// `VPOD_KERNEL` and `VPOD_INITRD` in containerd's environment win over
    /// the file (a test or a one-off kernel without editing the config).
    fn apply_env(&mut self) {
        if let Some(k) = std::env::var_os("VPOD_KERNEL") {
            self.kernel = k.into();
        }
        if let Some(i) = std::env::var_os("VPOD_INITRD") {
            self.initrd = i.into();
        }
    }

    pub fn ephemeral_bytes(&self) -> u64 {
        self.ephemeral_storage_mib << 20
    }

    /// What a container image's layers may hold for the shim to build its rootfs disk
    /// (`max_image_size_mib`, `max_image_entries`; vpod-images' metadata bound).
    pub fn unpack_limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_bytes: self.max_image_size_mib << 20,
            max_entries: self.max_image_entries,
            ..UnpackLimits::DEFAULT
        }
    }
}

/// What a `[vmm]` table must hold beyond its types: a uid range the lease can take ids from
/// (no uid 0, inside u32), a cgroup parent below the cgroup mount, absolute state dirs (the shim
/// runs in whatever directory containerd starts it in).
fn check_vmm(v: &VmmProcessConfig) -> Result<(), String> {
    let r = v.uid_range;
    if r.first == 0 || r.count == 0 || r.first.checked_add(r.count - 1).is_none() {
        return Err(format!(
            "vmm.uid_range {{ first = {}, count = {} }}: needs first >= 1, count >= 1 and \
             first + count - 1 <= {}",
            r.first,
            r.count,
            u32::MAX
        ));
    }
    if let Some(p) = &v.cgroup_parent {
        let below = p
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !below {
            return Err(format!(
                "vmm.cgroup_parent {}: a relative path without `..` (below the cgroup mount)",
                p.display()
            ));
        }
    }
    for (key, dir) in [
        ("vmm.lease_dir", Some(&v.lease_dir)),
        ("vmm.jail_root", v.jail_root.as_ref()),
    ] {
        if let Some(d) = dir.filter(|d| !d.is_absolute()) {
            return Err(format!("{key} {}: not an absolute path", d.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &str, body: &str) -> Vec<u8> {
        prost::Message::encode_to_vec(&RuntimeOptions {
            type_url: String::new(),
            config_path: path.into(),
            config_body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn the_config_path_of_the_runtime_options_is_read() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("shim.toml");
        std::fs::write(
            &f,
            "kernel = \"/k\"\ndefault_vcpus = 2\ndefault_memory_mib = 300\nkubelet_root = \"/data/kubelet\"\n",
        )
        .unwrap();
        let c = ShimConfig::resolve(
            "runtimeoptions.v1.Options",
            &options(f.to_str().unwrap(), ""),
        )
        .unwrap();
        assert_eq!(c.default_vcpus, 2);
        assert_eq!(c.default_memory_mib, 300);
        assert_eq!(c.kubelet_root, PathBuf::from("/data/kubelet"));
        // Unset fields keep their defaults.
        assert_eq!(c.state_dir, PathBuf::from(STATE_ROOT));
        // Issue 12 item 8: ephemeral disks are on a real disk, not under /run (tmpfs).
        assert!(
            !c.ephemeral_dir.starts_with("/run"),
            "{:?}",
            c.ephemeral_dir
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_is_valid_and_shows_the_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("vpod-shim.toml");
        assert_eq!(ShimConfig::load(&shipped).unwrap(), ShimConfig::default());
    }

    #[test]
    fn an_inline_body_and_no_options_work() {
        let c = ShimConfig::resolve(
            "type.googleapis.com/runtimeoptions.v1.Options",
            &options("", "ephemeral_storage_mib = 64"),
        )
        .unwrap();
        assert_eq!(c.ephemeral_bytes(), 64 << 20);
        let d = ShimConfig::resolve("", &[]).unwrap();
        assert_eq!(d.ephemeral_storage_mib, EPHEMERAL_MIB);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let e = ShimConfig::resolve(
            "runtimeoptions.v1.Options",
            &options("/nonexistent/vpod.toml", ""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vpod.toml"), "{e}");
        let e = ShimConfig::resolve("runtimeoptions.v1.Options", &options("", "kernal = \"/k\""))
            .unwrap_err();
        assert!(e.to_string().contains("kernal"), "{e}");
        let e = ShimConfig::resolve(
            "runtimeoptions.v1.Options",
            &options("", "default_memory_mib = 16"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("default_memory_mib"), "{e}");
        let e = ShimConfig::resolve("runtimeoptions.v1.Options", b"\xff\xff").unwrap_err();
        assert!(matches!(e, ConfigError::Options { .. }), "{e}");
    }

    /// The `[vmm]` table is `VmmProcessConfig` as it is: each key set, the rest defaults.
    #[test]
    fn the_vmm_table_sets_the_vmm_process() {
        use vpod_jail::ids::IdRange;
        use vpod_vmm::control::SeccompMode;
        let c = ShimConfig::parse(
            "kernel = \"/k\"\n\
             [vmm]\n\
             binary = \"/opt/vpod/vpod-vmm\"\n\
             uid_range = { first = 200000000, count = 1000 }\n\
             lease_dir = \"/run/vpod/leases\"\n\
             cgroup_parent = \"vpod.slice/pods\"\n\
             jail_root = \"/var/lib/vpod/jails\"\n\
             seccomp = \"log\"\n\
             memory_overhead_mib = 96\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(
            c.vmm,
            VmmProcessConfig {
                binary: Some("/opt/vpod/vpod-vmm".into()),
                jail: true,
                uid_range: IdRange {
                    first: 200_000_000,
                    count: 1000
                },
                lease_dir: "/run/vpod/leases".into(),
                cgroup_parent: Some("vpod.slice/pods".into()),
                jail_root: Some("/var/lib/vpod/jails".into()),
                seccomp: SeccompMode::Log,
                memory_overhead_mib: 96,
            }
        );
        // A partial table keeps the other keys' defaults; "" is no cgroup of its own.
        let c = ShimConfig::parse("[vmm]\njail = false\ncgroup_parent = \"\"", "t").unwrap();
        assert_eq!(
            c.vmm,
            VmmProcessConfig {
                jail: false,
                cgroup_parent: None,
                ..VmmProcessConfig::default()
            }
        );
        // No table: the defaults.
        let d = ShimConfig::parse("default_vcpus = 2", "t").unwrap();
        assert_eq!(d.vmm, VmmProcessConfig::default());
        assert_eq!(d.vmm.uid_range, IdRange::default());
        assert_eq!(d.vmm.cgroup_parent, Some(PathBuf::from("vpod")));
        assert_eq!(d.vmm.seccomp, SeccompMode::Enforce);
    }

    #[test]
    fn bad_vmm_tables_are_errors_naming_the_key() {
        for (body, key) in [
            ("[vmm]\njial = false", "jial"),
            ("[vmm]\nseccomp = \"loud\"", "loud"),
            ("[vmm]\nuid_range = { first = 5 }", "count"),
            (
                "[vmm]\nuid_range = { first = 0, count = 10 }",
                "vmm.uid_range",
            ),
            (
                "[vmm]\nuid_range = { first = 1, count = 0 }",
                "vmm.uid_range",
            ),
            (
                "[vmm]\nuid_range = { first = 4294967295, count = 2 }",
                "vmm.uid_range",
            ),
            (
                "[vmm]\ncgroup_parent = \"/sys/fs/cgroup/x\"",
                "vmm.cgroup_parent",
            ),
            (
                "[vmm]\ncgroup_parent = \"vpod/../system.slice\"",
                "vmm.cgroup_parent",
            ),
            ("[vmm]\nlease_dir = \"uids\"", "vmm.lease_dir"),
            ("[vmm]\njail_root = \"jails\"", "vmm.jail_root"),
            ("[vmm]\nmemory_overhead_mib = -1", "memory_overhead_mib"),
        ] {
            let e =
                ShimConfig::resolve("runtimeoptions.v1.Options", &options("", body)).unwrap_err();
            assert!(e.to_string().contains(key), "{body}: {e}");
        }
    }

    /// Issue 12 item 14: the unpacked size of a container image is bounded, configurably.
    #[test]
    fn image_limits_are_configurable_and_checked() {
        let d = ShimConfig::default();
        assert_eq!(d.unpack_limits(), UnpackLimits::DEFAULT);
        let c = ShimConfig::parse("max_image_size_mib = 64\nmax_image_entries = 500", "t").unwrap();
        let l = c.unpack_limits();
        assert_eq!((l.max_bytes, l.max_entries), (64 << 20, 500));
        assert_eq!(
            l.max_metadata_bytes,
            UnpackLimits::DEFAULT.max_metadata_bytes
        );
        for (body, key) in [
            ("max_image_size_mib = 0", "max_image_size_mib"),
            (
                "max_image_size_mib = 18446744073709551615",
                "max_image_size_mib",
            ),
            ("max_image_size_mib = -1", "max_image_size_mib"),
            ("max_image_entries = 0", "max_image_entries"),
            ("max_image_entries = \"many\"", "max_image_entries"),
        ] {
            let e =
                ShimConfig::resolve("runtimeoptions.v1.Options", &options("", body)).unwrap_err();
            assert!(e.to_string().contains(key), "{body}: {e}");
        }
    }
}
