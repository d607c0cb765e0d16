//! The flags of `vpod run`: what a pod is started with, and what its record keeps (`run.json`)
//! for `ps` and for the detached supervisor, which starts the pod from them; and the bounds on
//! what building an image's block image may unpack, which `vpod run` shares with `vpod image`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vpod_images::UnpackLimits;

use crate::quantity::parse_bytes;

/// `--max-unpacked-size`'s default: vpod-images' own bound ([`UnpackLimits::DEFAULT`]).
pub const DEFAULT_MAX_UNPACKED_SIZE: &str = "10Gi";

/// What building an image's block image may unpack, all layers together (`vpod image pull`,
/// `import` and `disk`, and `vpod run` when the block image is not built yet). A cached block
/// image is used as it is.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnpackArgs {
    /// Largest unpacked size of an image (the sizes of its files in all layers: 10Gi, 512Mi,
    /// ...); a bigger image fails to build.
    #[arg(
        long,
        env = "VPOD_MAX_UNPACKED_SIZE",
        value_name = "SIZE",
        default_value = DEFAULT_MAX_UNPACKED_SIZE,
        value_parser = parse_bytes
    )]
    pub max_unpacked_size: u64,
    /// Most tar entries (files, dirs, links, whiteouts) an image's layers may hold together.
    #[arg(
        long,
        env = "VPOD_MAX_ENTRIES",
        value_name = "N",
        default_value_t = UnpackLimits::DEFAULT.max_entries,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_entries: u64,
}

impl Default for UnpackArgs {
    /// vpod-images' defaults (what a record written before these flags means).
    fn default() -> Self {
        UnpackArgs {
            max_unpacked_size: UnpackLimits::DEFAULT.max_bytes,
            max_entries: UnpackLimits::DEFAULT.max_entries,
        }
    }
}

impl UnpackArgs {
    /// The limits these flags set (vpod-images' bound on tar metadata stays).
    pub fn limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_bytes: self.max_unpacked_size,
            max_entries: self.max_entries,
            ..UnpackLimits::DEFAULT
        }
    }

    /// `err` with the flag that raises the limit it hit, when it is one of these.
    pub fn explain(err: vpod_images::Error) -> String {
        let flag = match &err {
            vpod_images::Error::LimitExceeded { limit_name, .. } => match *limit_name {
                "max_bytes" => Some("--max-unpacked-size (VPOD_MAX_UNPACKED_SIZE)"),
                "max_entries" => Some("--max-entries (VPOD_MAX_ENTRIES)"),
                _ => None,
            },
            _ => None,
        };
        match flag {
            Some(f) => format!("{err}; {f} raises it"),
            None => err.to_string(),
        }
    }
}

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
    /// Bounds on building the image's block image (when it is not built yet).
    #[command(flatten)]
    #[serde(flatten)]
    pub unpack: UnpackArgs,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        unpack: UnpackArgs,
    }

    fn parse(flags: &[&str]) -> Result<UnpackArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("vpod").chain(flags.iter().copied()))
            .map(|f| f.unpack)
    }

    /// Issue 12 item 14: the unpack bounds are flags (quantities like `--memory`'s), with
    /// vpod-images' defaults.
    #[test]
    fn unpack_flags_parse_into_limits() {
        assert_eq!(
            parse(&[]).unwrap().limits(),
            UnpackLimits::DEFAULT,
            "{DEFAULT_MAX_UNPACKED_SIZE} is the library's default"
        );
        assert_eq!(UnpackArgs::default(), parse(&[]).unwrap());
        let l = parse(&["--max-unpacked-size", "512Mi", "--max-entries", "100"])
            .unwrap()
            .limits();
        assert_eq!((l.max_bytes, l.max_entries), (512 << 20, 100));
        assert_eq!(
            l.max_metadata_bytes,
            UnpackLimits::DEFAULT.max_metadata_bytes
        );
        assert_eq!(
            parse(&["--max-unpacked-size", "1G"])
                .unwrap()
                .max_unpacked_size,
            1_000_000_000
        );
        for bad in [
            &["--max-unpacked-size", "0"][..],
            &["--max-unpacked-size", "lots"],
            &["--max-unpacked-size", "12Q"],
            &["--max-entries", "0"],
            &["--max-entries=-3"],
        ] {
            let e = parse(bad).unwrap_err().to_string();
            let flag = bad[0].split('=').next().unwrap();
            assert!(e.contains(flag), "{bad:?}: {e}");
        }
    }

    /// A record written before the flags existed runs with the defaults; the flags a record
    /// keeps come back as they were (the detached supervisor builds with them).
    #[test]
    fn records_keep_the_unpack_flags() {
        #[derive(Parser)]
        struct Run {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = Run::parse_from(["vpod", "--max-unpacked-size", "2Gi", "img"]).run;
        assert_eq!(args.unpack.max_unpacked_size, 2 << 30);
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(json["max_unpacked_size"], 2u64 << 30);
        let back: RunArgs = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.unpack, args.unpack);
        let mut old = json;
        let o = old.as_object_mut().unwrap();
        o.remove("max_unpacked_size");
        o.remove("max_entries");
        let back: RunArgs = serde_json::from_value(old).unwrap();
        assert_eq!(back.unpack, UnpackArgs::default());
    }
}
