//! `vpod`: the node-side command: `vpod image ...` over the image store of vpod-images, and
//! pods: `vpod run` (one-shot or `-d`), `ps`, `exec`, `logs`, `stop`, `rm`, each pod driven
//! through `vpod_sandbox`'s pod front.

mod args;
mod logfile;
mod pods;
mod quantity;
mod record;
mod run;
mod stdio;
mod term;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vpod_images::{FsType, Progress, RegistryAuth, RegistryConfig, Store};

use args::UnpackArgs;

#[derive(Parser)]
#[command(
    name = "vpod",
    version,
    about = "vpod: every Kubernetes pod in its own microVM"
)]
struct Cli {
    /// State directory (image store under <root>/images).
    #[arg(long, global = true, default_value = vpod_images::DEFAULT_ROOT)]
    root: PathBuf,
    /// Runtime directory (pod records under <run-dir>/pods).
    #[arg(long, global = true, env = "VPOD_RUN_DIR", default_value = "/run/vpod")]
    run_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage OCI images and their block images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run a container in a new pod (its own microVM).
    Run(Box<args::RunArgs>),
    /// List pods (running ones; -a for all).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Run a command in a running pod's container.
    Exec {
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(short = 'i', long)]
        interactive: bool,
        pod: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Print a pod's container output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        pod: String,
    },
    /// Stop a pod's container (SIGTERM, then SIGKILL after the grace period) and its VM.
    Stop {
        /// Grace period in seconds.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        pod: String,
    },
    /// Remove a stopped pod's record (-f: stop it first).
    Rm {
        #[arg(short, long)]
        force: bool,
        pod: String,
    },
    /// Serve CRI (kubelet's RuntimeService and ImageService) on a unix socket: vpod's own
    /// runtime, no containerd. Runs until SIGTERM or SIGINT, then stops every pod.
    Serve {
        /// The config file (TOML; see docs/serve.md). The default one may be missing.
        #[arg(long, default_value = vpod_cri::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Internal: the detached side of `vpod run -d`.
    #[command(name = "__supervise", hide = true)]
    Supervise { record: PathBuf },
}

/// Pod commands; the exit code is the container's where there is one.
fn pod_cmd(cli: Cli) -> Result<u8, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| format!("tokio runtime: {err}"))?;
    let run_dir = cli.run_dir.clone();
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(args) => {
                let store = Store::open(&cli.root)
                    .map_err(|e| e.to_string())?
                    .with_unpack_limits(args.unpack.limits());
                run::run(*args, &store, &cli.root, &run_dir).await
            }
            Cmd::Supervise { record } => {
                let store = Store::open(&cli.root).map_err(|e| e.to_string())?;
                run::supervise(&record, &store).await
            }
            Cmd::Ps { all } => pods::ps(&run_dir, all),
            Cmd::Exec {
                tty,
                interactive,
                pod,
                command,
            } => pods::exec(&run_dir, &pod, tty, interactive, command).await,
            Cmd::Logs { follow, pod } => pods::logs(&run_dir, &pod, follow).await,
            Cmd::Stop { time, pod } => {
                pods::stop(&run_dir, &pod, std::time::Duration::from_secs(time)).await
            }
            Cmd::Rm { force, pod } => pods::rm(&run_dir, &pod, force).await,
            Cmd::Serve { config } => serve(&config).await,
            Cmd::Image(_) => unreachable!("image commands are handled by run()"),
        }
    })
}

/// `vpod serve`: the CRI server until a signal.
async fn serve(config: &std::path::Path) -> Result<u8, String> {
    let cfg = vpod_cri::ServeConfig::load(config).map_err(|e| e.to_string())?;
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
        tracing::info!("vpod serve: stopping every pod");
    };
    vpod_cri::serve(cfg, stop)
        .await
        .map_err(|e| e.to_string())?;
    Ok(0)
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull an image from a registry (tag or digest) and build its block image.
    Pull {
        reference: String,
        /// User name for basic auth (password from --password-stdin or VPOD_REGISTRY_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// A bearer token (or VPOD_REGISTRY_TOKEN).
        #[arg(long, conflicts_with = "username")]
        token: Option<String>,
        /// Registry config (insecure hosts, mirrors), TOML.
        #[arg(long, default_value = "/etc/vpod/registries.toml")]
        registry_config: PathBuf,
        /// Only fetch; build the block image on first use.
        #[arg(long)]
        no_build: bool,
        #[command(flatten)]
        unpack: UnpackArgs,
    },
    /// Import an OCI image layout (dir or tar) or a `docker save` tar.
    Import {
        path: PathBuf,
        /// Name for the image (when the archive holds one).
        #[arg(long)]
        name: Option<String>,
        /// Only import; build the block image on first use.
        #[arg(long)]
        no_build: bool,
        #[command(flatten)]
        unpack: UnpackArgs,
    },
    /// List images.
    Ls,
    /// Show an image's manifest, configuration and block image, as JSON.
    Inspect { reference: String },
    /// Build (or find cached) the block image of an image and print its path.
    Disk {
        reference: String,
        /// erofs (default when mkfs.erofs is installed) or ext4.
        #[arg(long)]
        ext4: bool,
        #[command(flatten)]
        unpack: UnpackArgs,
    },
    /// Remove an image reference (refused while a pod uses the image).
    Rm { reference: String },
    /// Remove blobs and block images that no reference or pod uses.
    Prune,
    /// Store usage figures, as JSON.
    Usage,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn report(img: &vpod_images::BlockImage) {
    if img.built {
        eprintln!(
            "block image {} ({}, unpack {:.0} ms, mkfs {:.0} ms)",
            img.path.display(),
            mib(img.info.disk_size),
            img.stats.unpack_ms,
            img.stats.mkfs_ms
        );
    } else {
        eprintln!("block image {} (cached)", img.path.display());
    }
}

fn auth(
    username: Option<String>,
    password_stdin: bool,
    token: Option<String>,
) -> Result<RegistryAuth, String> {
    if let Some(t) = token.or_else(|| std::env::var("VPOD_REGISTRY_TOKEN").ok()) {
        return Ok(RegistryAuth::Bearer(t));
    }
    let Some(user) = username else {
        return Ok(RegistryAuth::Anonymous);
    };
    let password = if password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        std::env::var("VPOD_REGISTRY_PASSWORD")
            .map_err(|_| "--username needs --password-stdin or VPOD_REGISTRY_PASSWORD".to_owned())?
    };
    Ok(RegistryAuth::Basic(user, password))
}

impl ImageCmd {
    /// The unpack bounds of a command that may build a block image.
    fn unpack(&self) -> UnpackArgs {
        match self {
            ImageCmd::Pull { unpack, .. }
            | ImageCmd::Import { unpack, .. }
            | ImageCmd::Disk { unpack, .. } => unpack.clone(),
            _ => UnpackArgs::default(),
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let Cmd::Image(cmd) = cli.cmd else {
        unreachable!("pod commands are handled by pod_cmd()")
    };
    let store = Store::open(&cli.root)
        .map_err(|e| e.to_string())?
        .with_unpack_limits(cmd.unpack().limits());
    let e = UnpackArgs::explain;
    match cmd {
        ImageCmd::Pull {
            reference,
            username,
            password_stdin,
            token,
            registry_config,
            no_build,
            unpack: _,
        } => {
            let auth = auth(username, password_stdin, token)?;
            let cfg = RegistryConfig::load(&registry_config).map_err(e)?;
            let tty = std::io::stderr().is_terminal();
            let progress = move |p: Progress| match p {
                Progress::Resolved {
                    manifest,
                    endpoint,
                    blobs,
                    missing,
                    bytes,
                } => eprintln!(
                    "{manifest} from {endpoint}: {missing} of {blobs} blobs to fetch ({})",
                    mib(bytes)
                ),
                Progress::BlobDone { digest, size } if tty => {
                    eprintln!("  fetched {} {}", digest.short(), mib(size))
                }
                Progress::BlobDone { .. } => {}
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|err| format!("tokio runtime: {err}"))?;
            // The block image is built before the name is set: a failed build names nothing.
            if no_build {
                let pulled = rt
                    .block_on(vpod_images::pull(
                        &store, &reference, &auth, &cfg, &progress,
                    ))
                    .map_err(e)?;
                println!("{} {}", pulled.name, pulled.manifest);
            } else {
                let (pulled, img) = rt
                    .block_on(vpod_images::pull_and_build(
                        &store,
                        &reference,
                        &auth,
                        &cfg,
                        &progress,
                        FsType::detect(),
                    ))
                    .map_err(e)?;
                println!("{} {}", pulled.name, pulled.manifest);
                report(&img);
            }
        }
        ImageCmd::Import {
            path,
            name,
            no_build,
            unpack: _,
        } => {
            if no_build {
                for i in vpod_images::import(&store, &path, name.as_deref()).map_err(e)? {
                    println!("{} {}", i.name, i.manifest);
                }
            } else {
                let built =
                    vpod_images::import_and_build(&store, &path, name.as_deref(), FsType::detect())
                        .map_err(e)?;
                for (i, img) in built {
                    println!("{} {}", i.name, i.manifest);
                    report(&img);
                }
            }
        }
        ImageCmd::Ls => {
            println!(
                "{:<60} {:<14} {:>12} {:>12}",
                "NAME", "DIGEST", "LAYERS", "DISK"
            );
            for (name, d) in store.refs().map_err(e)? {
                let (layers, disk) = match store.manifest(&d) {
                    Ok((md, m)) => (
                        mib(m.layers.iter().map(|l| l.size).sum()),
                        store
                            .cached_block_image(&md)
                            .ok()
                            .flatten()
                            .map_or("-".to_owned(), |b| mib(b.info.disk_size)),
                    ),
                    Err(err) => (format!("error: {err}"), "-".into()),
                };
                println!("{name:<60} {:<14} {layers:>12} {disk:>12}", d.short());
            }
        }
        ImageCmd::Inspect { reference } => {
            let d = store.resolve(&reference).map_err(e)?;
            let (md, manifest, config) = store.image_config(&d).map_err(e)?;
            let names: Vec<String> = store
                .refs()
                .map_err(e)?
                .into_iter()
                .filter(|(_, v)| *v == d)
                .map(|(k, _)| k)
                .collect();
            let disk = store.cached_block_image(&md).map_err(e)?;
            let out = serde_json::json!({
                "names": names,
                "digest": d,
                "manifest": md,
                "layers": manifest.layers,
                "architecture": config.architecture,
                "os": config.os,
                "config": config.config.unwrap_or_default(),
                "block_image": disk.map(|b| serde_json::json!({"path": b.path, "fs_type": b.info.fs_type, "size": b.info.disk_size})),
                "used_by": store.leases(&md).map_err(e)?,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        }
        ImageCmd::Disk {
            reference, ext4, ..
        } => {
            let d = store.resolve(&reference).map_err(e)?;
            let fs = if ext4 { FsType::Ext4 } else { FsType::detect() };
            let img = store.ensure_block_image(&d, fs).map_err(e)?;
            println!("{}", img.path.display());
        }
        ImageCmd::Rm { reference } => {
            for n in store.remove(&reference).map_err(e)? {
                println!("untagged {n}");
            }
        }
        ImageCmd::Prune => {
            let r = store.prune().map_err(e)?;
            println!(
                "removed {} blobs, {} block images, {} temp files; freed {}",
                r.blobs_removed,
                r.disks_removed,
                r.temp_removed,
                mib(r.bytes_freed)
            );
        }
        ImageCmd::Usage => {
            let u = store.usage().map_err(e)?;
            println!("{}", serde_json::to_string_pretty(&u).expect("json"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server's log is its operator's record (pods booted, pulls); a command's is its errors.
    let level = if matches!(cli.cmd, Cmd::Serve { .. }) {
        "info"
    } else {
        "error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VPOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if !matches!(cli.cmd, Cmd::Supervise { .. } | Cmd::Serve { .. }) {
        // Pods whose `vpod run` or supervisor was killed: their records go.
        for id in record::collect_garbage(&cli.run_dir) {
            tracing::info!("removed the record of pod {id}: its supervisor is gone");
        }
    }
    if matches!(cli.cmd, Cmd::Image(_)) {
        return match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("vpod: error: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    match pod_cmd(cli) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("vpod: error: {msg}");
            // 125: vpod itself failed (the container's codes are 0-255 too;
            // Docker uses the same convention).
            ExitCode::from(125)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("vpod").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    /// Every command that may build a block image takes the unpack bounds.
    #[test]
    fn image_commands_that_build_take_the_unpack_bounds() {
        let flags = ["--max-unpacked-size", "1Mi", "--max-entries", "7"];
        for c in [
            &["image", "import", "dir"][..],
            &["image", "pull", "busybox"],
            &["image", "disk", "busybox"],
        ] {
            let Cmd::Image(i) = cmd(&[c, &flags[..]].concat()) else {
                panic!("{c:?}")
            };
            let l = i.unpack().limits();
            assert_eq!((l.max_bytes, l.max_entries), (1 << 20, 7), "{c:?}");
            let Cmd::Image(i) = cmd(c) else {
                panic!("{c:?}")
            };
            assert_eq!(i.unpack().limits(), vpod_images::UnpackLimits::DEFAULT);
        }
        let Cmd::Run(r) = cmd(&["run", "--max-unpacked-size", "1Mi", "img", "--", "sh"]) else {
            panic!("run")
        };
        assert_eq!(r.unpack.max_unpacked_size, 1 << 20);
        assert_eq!(r.command, ["sh"]);
        // Commands that build nothing don't take them.
        assert!(Cli::try_parse_from(["vpod", "image", "ls", "--max-entries", "7"]).is_err());
    }
}
