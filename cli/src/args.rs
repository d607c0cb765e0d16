//! The flags of `vpod run`: what a pod is started with, and what its record keeps (`run.json`)
//! for `ps` and for the detached supervisor, which starts the pod from them; the bounds on
//! what building an image's block image may unpack, which `vpod run` shares with `vpod image`;
//! and how the pod's VMM process is started and jailed (`--vmm-*`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vpod_images::UnpackLimits;
use vpod_jail::ids::IdRange;
use vpod_sandbox::VmmProcessConfig;
use vpod_vmm::control::SeccompMode;

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

/// How the pod's VMM process (`vpod-vmm`) is started and jailed; unset flags keep
/// [`VmmProcessConfig`]'s defaults (the shim's `[vmm]` table's).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmmArgs {
    /// The vpod-vmm binary (default: the one next to vpod, else vpod-vmm on PATH).
    #[arg(long, env = "VPOD_VMM_BINARY", value_name = "PATH")]
    pub vmm_binary: Option<PathBuf>,
    /// Don't jail the VMM (it stays its own process): only to debug a host where the jail
    /// can't work.
    #[arg(long, env = "VPOD_VMM_NO_JAIL")]
    pub vmm_no_jail: bool,
    /// The uids (= gids) the jailed VMMs run as, one per pod: FIRST .. FIRST+COUNT-1
    /// (default: 100000000:65536).
    #[arg(
        long,
        env = "VPOD_VMM_UID_RANGE",
        value_name = "FIRST:COUNT",
        value_parser = parse_uid_range
    )]
    pub vmm_uid_range: Option<IdRange>,
    /// The cgroup the pod's VMM cgroup (<PATH>/<pod id>) goes under, relative to
    /// /sys/fs/cgroup (default: vpod).
    #[arg(
        long,
        env = "VPOD_VMM_CGROUP_PARENT",
        value_name = "PATH",
        value_parser = parse_cgroup_parent,
        conflicts_with = "vmm_no_cgroup"
    )]
    pub vmm_cgroup_parent: Option<PathBuf>,
    /// No cgroup of the VMM's own (no memory or pids limit on the VMM process).
    #[arg(long, env = "VPOD_VMM_NO_CGROUP")]
    pub vmm_no_cgroup: bool,
    /// Directory the pod's jail root goes in, as <DIR>/<pod id> (default: inside the pod's
    /// state dir).
    #[arg(long, env = "VPOD_VMM_JAIL_ROOT", value_name = "DIR")]
    pub vmm_jail_root: Option<PathBuf>,
    /// What a syscall off a VMM thread's seccomp list does: enforce (kill the VMM), log (allow
    /// and log: test beds) or off (no filters: debugging); default: enforce.
    #[arg(
        long,
        env = "VPOD_VMM_SECCOMP",
        value_name = "MODE",
        value_parser = parse_seccomp
    )]
    pub vmm_seccomp: Option<SeccompMode>,
}

impl VmmArgs {
    /// The VMM process's config: [`VmmProcessConfig::default`] with what the flags set.
    pub fn config(&self) -> VmmProcessConfig {
        let d = VmmProcessConfig::default();
        VmmProcessConfig {
            binary: self.vmm_binary.clone(),
            jail: !self.vmm_no_jail,
            uid_range: self.vmm_uid_range.unwrap_or(d.uid_range),
            cgroup_parent: match (&self.vmm_cgroup_parent, self.vmm_no_cgroup) {
                (_, true) => None,
                (Some(p), false) => Some(p.clone()),
                (None, false) => d.cgroup_parent.clone(),
            },
            jail_root: self.vmm_jail_root.clone(),
            seccomp: self.vmm_seccomp.unwrap_or(d.seccomp),
            ..d
        }
    }
}

/// `--vmm-uid-range FIRST:COUNT`: a range the uid lease can take from (no uid 0, inside u32).
pub fn parse_uid_range(s: &str) -> Result<IdRange, String> {
    let (first, count) = s
        .split_once(':')
        .ok_or("expected FIRST:COUNT, e.g. 100000000:65536")?;
    let num = |what: &str, v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{what} {v:?}: {e} (a uid: 0 to {})", u32::MAX))
    };
    let (first, count) = (num("FIRST", first)?, num("COUNT", count)?);
    if first == 0 {
        return Err("FIRST must be at least 1 (uid 0 is root)".into());
    }
    if count == 0 {
        return Err("COUNT must be at least 1".into());
    }
    if first.checked_add(count - 1).is_none() {
        return Err(format!(
            "FIRST+COUNT-1 = {} is past the last uid {}",
            u64::from(first) + u64::from(count) - 1,
            u32::MAX
        ));
    }
    Ok(IdRange { first, count })
}

/// `--vmm-cgroup-parent`: a relative path without `..`, so the cgroup is below the mount.
fn parse_cgroup_parent(s: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let p = Path::new(s);
    if p.as_os_str().is_empty() {
        return Err("empty (--vmm-no-cgroup: no cgroup of its own)".into());
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("a relative path without `..` (below /sys/fs/cgroup)".into());
    }
    Ok(p.to_path_buf())
}

/// `--vmm-seccomp enforce|log|off`.
fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    match s {
        "enforce" => Ok(SeccompMode::Enforce),
        "log" => Ok(SeccompMode::Log),
        "off" => Ok(SeccompMode::Off),
        _ => Err("expected enforce, log or off".into()),
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
    /// How the pod's VMM process is started and jailed.
    #[command(flatten)]
    #[serde(flatten)]
    pub vmm: VmmArgs,
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

    #[derive(Parser)]
    struct VmmFlags {
        #[command(flatten)]
        vmm: VmmArgs,
    }

    fn vmm(flags: &[&str]) -> Result<VmmArgs, clap::Error> {
        VmmFlags::try_parse_from(std::iter::once("vpod").chain(flags.iter().copied()))
            .map(|f| f.vmm)
    }

    /// No flag: the VMM process's defaults; each flag sets its key and only that.
    #[test]
    fn vmm_flags_map_into_the_vmm_process_config() {
        assert_eq!(vmm(&[]).unwrap().config(), VmmProcessConfig::default());
        let c = vmm(&[
            "--vmm-binary",
            "/opt/vpod-vmm",
            "--vmm-uid-range",
            "200000:1000",
            "--vmm-cgroup-parent",
            "vpod.slice/run",
            "--vmm-jail-root",
            "/run/vpod/jails",
            "--vmm-seccomp",
            "log",
        ])
        .unwrap()
        .config();
        assert_eq!(
            c,
            VmmProcessConfig {
                binary: Some("/opt/vpod-vmm".into()),
                uid_range: IdRange {
                    first: 200_000,
                    count: 1000
                },
                cgroup_parent: Some("vpod.slice/run".into()),
                jail_root: Some("/run/vpod/jails".into()),
                seccomp: SeccompMode::Log,
                ..VmmProcessConfig::default()
            }
        );
        let c = vmm(&["--vmm-no-jail", "--vmm-no-cgroup"]).unwrap().config();
        assert!(!c.jail);
        assert_eq!(c.cgroup_parent, None);
        assert_eq!(c.uid_range, IdRange::default());
        assert_eq!(
            vmm(&["--vmm-seccomp", "off"]).unwrap().config().seccomp,
            SeccompMode::Off
        );
        // Each flag has its env var (read the same way: `tests/cli.rs` sets one).
        let cmd = <VmmFlags as clap::CommandFactory>::command();
        let envs: Vec<(String, String)> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "help")
            .map(|a| {
                let long = a.get_long().unwrap().to_owned();
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                (long, env.unwrap_or_default())
            })
            .collect();
        assert_eq!(envs.len(), 7, "{envs:?}");
        for (long, env) in &envs {
            assert_eq!(
                *env,
                format!("VPOD_{}", long.to_uppercase().replace('-', "_")),
                "--{long}"
            );
        }
    }

    /// Bad values are usage errors naming the flag and what is wrong.
    #[test]
    fn bad_vmm_flags_say_why() {
        for (bad, why) in [
            (&["--vmm-uid-range", "100000"][..], "expected FIRST:COUNT"),
            (&["--vmm-uid-range", "x:10"], "FIRST \"x\""),
            (&["--vmm-uid-range", "10:-1"], "COUNT \"-1\""),
            (&["--vmm-uid-range", "0:10"], "uid 0 is root"),
            (&["--vmm-uid-range", "10:0"], "COUNT must be at least 1"),
            (&["--vmm-uid-range", "4294967295:2"], "past the last uid"),
            (
                &["--vmm-cgroup-parent", "/sys/fs/cgroup/x"],
                "relative path",
            ),
            (&["--vmm-cgroup-parent", "a/../b"], "without `..`"),
            (&["--vmm-cgroup-parent", ""], "--vmm-no-cgroup"),
            (&["--vmm-seccomp", "strict"], "enforce, log or off"),
            (
                &["--vmm-cgroup-parent", "x", "--vmm-no-cgroup"],
                "cannot be used with",
            ),
        ] {
            let e = vmm(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            let e = e.to_string();
            assert!(e.contains(bad[0]) && e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(
            parse_uid_range("4294967295:1"),
            Ok(IdRange {
                first: u32::MAX,
                count: 1
            })
        );
    }

    /// The detached supervisor starts the pod from the record: the `--vmm-*` flags are in it;
    /// a record written before them means the defaults.
    #[test]
    fn records_keep_the_vmm_flags() {
        #[derive(Parser)]
        struct Run {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = Run::parse_from([
            "vpod",
            "--vmm-no-jail",
            "--vmm-uid-range",
            "7000:7",
            "--vmm-seccomp",
            "log",
            "--vmm-no-cgroup",
            "img",
        ])
        .run;
        let json = serde_json::to_value(&args).unwrap();
        let back: RunArgs = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.vmm, args.vmm);
        assert_eq!(back.vmm.config(), args.vmm.config());
        assert_eq!(json["vmm_seccomp"], "log");
        let mut old = json;
        old.as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("vmm_"));
        let back: RunArgs = serde_json::from_value(old).unwrap();
        assert_eq!(back.vmm.config(), VmmProcessConfig::default());
    }
}
