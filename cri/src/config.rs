//! `vpod serve`'s configuration: `/etc/vpod/vpod.toml` (or `--config`); every field has a
//! default, so an empty file (or none) serves with the paths `make install` uses.
//!
//! ```toml
//! socket = "/run/vpod/vpod.sock"
//! default_memory_mib = 576
//! [registry]
//! insecure = ["registry.lan:5000"]
//! [registry.mirrors]
//! "docker.io" = ["127.0.0.1:5000"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vpod_images::RegistryConfig;
use vpod_sandbox::VmmProcessConfig;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/vpod/vpod.toml";

/// Why the config could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists and could not be read.
    #[error("read the config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid config.
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("config {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which field and why.
        what: String,
    },
}

/// Everything `vpod serve` needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The CRI socket kubelet dials (made 0660, root's).
    pub socket: PathBuf,
    /// Runtime state: one dir per pod (slots, VM sockets, console), on tmpfs.
    pub state_dir: PathBuf,
    /// Pods' ephemeral disks, one dir per pod (on a real disk: every block a guest writes).
    pub disk_dir: PathBuf,
    /// The image store (`vpod image --root`): blobs and one erofs disk per image.
    pub image_root: PathBuf,
    /// kubelet's `--root-dir`: where its volume dirs are recognized.
    pub kubelet_root: PathBuf,
    /// The guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// The guest initramfs with vpod-init.
    pub initrd: PathBuf,
    /// vCPUs of a pod VM whose pod declares no CPU limit.
    pub default_vcpus: u8,
    /// Memory of a pod VM whose pod declares no memory limit, guest overhead included.
    pub default_memory_mib: u32,
    /// How much a pod VM may grow when a container needs more than it has; 0: never.
    pub hotplug_memory_mib: u32,
    /// Size limit of each pod's ephemeral disk.
    pub ephemeral_storage_mib: u64,
    /// CNI network configs (the first `.conflist`/`.conf` by name is the pod network).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Registry mirrors and plain-HTTP registries (vpod-images' registry config).
    pub registry: RegistryConfig,
    /// Most bytes one container's log file may reach before output is dropped (until kubelet
    /// rotates it with ReopenContainerLog).
    pub max_log_mib: u64,
    /// How each pod's VMM process is started and jailed: the `[vmm]` table.
    pub vmm: VmmProcessConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let size = vpod_sandbox::VmSize::for_pod(&[], 1);
        ServeConfig {
            socket: "/run/vpod/vpod.sock".into(),
            state_dir: "/run/vpod/serve".into(),
            disk_dir: "/var/lib/vpod/serve-disks".into(),
            image_root: "/var/lib/vpod".into(),
            kubelet_root: "/var/lib/kubelet".into(),
            kernel: "/var/lib/vpod/guest/vmlinux".into(),
            initrd: "/var/lib/vpod/guest/initramfs.cpio".into(),
            default_vcpus: size.vcpus,
            default_memory_mib: size.mem_mib,
            hotplug_memory_mib: vpod_sandbox::DEFAULT_HOTPLUG_MIB,
            ephemeral_storage_mib: 1024,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            registry: RegistryConfig::default(),
            max_log_mib: 100,
            vmm: VmmProcessConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Reads `path`; a missing file at the default path is the default config, a missing file
    /// named on purpose is an error.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                String::new()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses a config's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, ConfigError> {
        let c: ServeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            source: Box::new(e),
        })?;
        let invalid = |what: &str| ConfigError::Invalid {
            path: path.into(),
            what: what.into(),
        };
        if c.default_vcpus == 0 {
            return Err(invalid("default_vcpus must be at least 1"));
        }
        if c.default_memory_mib < 128 {
            return Err(invalid("default_memory_mib must be at least 128"));
        }
        if c.ephemeral_storage_mib == 0 {
            return Err(invalid("ephemeral_storage_mib must be at least 1"));
        }
        if c.max_log_mib == 0 {
            return Err(invalid("max_log_mib must be at least 1"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_and_unknown_keys_are_refused() {
        let p = Path::new("/x.toml");
        assert_eq!(ServeConfig::parse("", p).unwrap(), ServeConfig::default());
        let c = ServeConfig::parse(
            "socket = \"/tmp/s.sock\"\n[registry.mirrors]\n\"docker.io\" = [\"127.0.0.1:5000\"]\n",
            p,
        )
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/s.sock"));
        assert_eq!(c.registry.mirrors["docker.io"], ["127.0.0.1:5000"]);
        let e = ServeConfig::parse("sockett = 1", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockett"), "{e}");
        let e = ServeConfig::parse("default_vcpus = 0", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_vcpus"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_unless_it_is_the_default_one() {
        let e = ServeConfig::load(Path::new("/nonexistent/vpod.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vpod.toml"), "{e}");
    }
}
