//! The flags of `vpod run`: what a pod is started with, and what its record keeps (`run.json`)
//! for `ps` and for the detached supervisor, which starts the pod from them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `--ephemeral-dir`'s default.
pub const DEFAULT_EPHEMERAL_DIR: &str = "/var/lib/vpod/ephemeral";

fn default_ephemeral_dir() -> PathBuf {
    DEFAULT_EPHEMERAL_DIR.into()
}

// `vpod run [FLAGS] IMAGE [COMMAND...]` (no doc comment: clap would take it for the about text).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct RunArgs {
    /// Memory limit of the container (256Mi, 1Gi, ...); sizes the VM.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit (1, 0.5, 500m); sizes the VM.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Size of the pod's ephemeral disk (writable layer, emptyDirs).
    #[arg(long, default_value = "1Gi")]
    pub ephemeral_storage: String,
    /// Where pods' ephemeral disks go, one dir per pod (a real disk: every block the guest
    /// writes lands there, so not a tmpfs such as /run).
    #[arg(long, env = "VPOD_EPHEMERAL_DIR", default_value = DEFAULT_EPHEMERAL_DIR)]
    #[serde(default = "default_ephemeral_dir")]
    pub ephemeral_dir: PathBuf,
    /// NAME=DIR[:DEST]: the files of host DIR as a secret in guest RAM,
    /// mounted read-only at DEST (default /run/secrets/NAME); re-pushed when
    /// they change.
    #[arg(long = "secret", value_name = "NAME=DIR[:DEST]")]
    pub secrets: Vec<String>,
    /// NAME=DIR[:DEST]: the files of host DIR as a configMap on the pod's
    /// disk, read-only at DEST (default /etc/config/NAME).
    #[arg(long = "configmap", value_name = "NAME=DIR[:DEST]")]
    pub configmaps: Vec<String>,
    /// K=V added to the image's environment.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Give the container a TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run in the background; print the pod id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Pod id (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// UID[:GID] to run as (default: the image's numeric user, else 0).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory in the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// All capabilities and no seccomp, inside the guest only.
    #[arg(long)]
    pub privileged: bool,
    /// Guest kernel (vmlinux).
    #[arg(
        long,
        env = "VPOD_KERNEL",
        default_value = "/var/lib/vpod/guest/vmlinux"
    )]
    pub kernel: PathBuf,
    /// Guest initramfs with vpod-init.
    #[arg(
        long,
        env = "VPOD_INITRD",
        default_value = "/var/lib/vpod/guest/initramfs.cpio"
    )]
    pub initrd: PathBuf,
    /// Image reference (name or digest) in the store.
    pub image: String,
    /// Command and arguments (after the image's entrypoint).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}
