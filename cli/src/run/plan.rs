//! What a `vpod run` pod start needs, resolved and checked before anything boots (or the run
//! detaches), so bad input fails at once: the limits, the image (and its block image), the
//! container's spec, the pod's config.

use std::path::Path;

use vpod_images::Store;
use vpod_sandbox::{ImageDisk, PodConfig, VmSize};

use super::spec::{self, Container, Limits, IMAGE_SERIAL};
use crate::args::RunArgs;
use crate::quantity::{parse_bytes, parse_cpus};
use crate::term;

/// A pod to boot and its one container.
#[derive(Debug)]
pub struct Plan {
    /// The pod.
    pub pod: PodConfig,
    /// Its container.
    pub container: Container,
}

/// The plan of pod `id` with state dir `vm_dir`, from `args` and the image in `store`.
pub fn plan(args: &RunArgs, store: &Store, id: &str, vm_dir: &Path) -> Result<Plan, String> {
    let limits = limits(args)?;
    let ephemeral =
        parse_bytes(&args.ephemeral_storage).map_err(|e| format!("--ephemeral-storage {e}"))?;
    check_memory(args, limits)?;
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(format!("--env {e:?}: expected K=V"));
        }
    }

    let digest = store.resolve(&args.image).map_err(|e| {
        format!(
            "image {:?}: {e} (pull it with `vpod image pull` or import it with `vpod image import`)",
            args.image
        )
    })?;
    let disk = store
        .ensure_block_image(&digest, vpod_images::FsType::detect())
        .map_err(|e| {
            format!(
                "image {}: block image: {}",
                args.image,
                crate::args::UnpackArgs::explain(e)
            )
        })?;
    let (_, _, config) = store
        .image_config(&digest)
        .map_err(|e| format!("image {}: {e}", args.image))?;
    let tty_size = if args.tty {
        term::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let image = config.config.unwrap_or_default();
    let container = spec::container(args, &image, id, limits, tty_size)?;

    let size = VmSize::for_pod(
        &[vpod_sandbox::Limits {
            memory_bytes: limits.memory,
            cpus: limits.cpus,
        }],
        host_cpus(),
    );
    let pod = PodConfig {
        ephemeral_dir: Some(args.ephemeral_dir.join(id)),
        vcpus: size.vcpus,
        mem_mib: size.mem_mib,
        ephemeral_bytes: ephemeral,
        images: vec![ImageDisk {
            serial: IMAGE_SERIAL.into(),
            path: disk.path,
        }],
        spare_slots: 0,
        vmm: args.vmm.config(),
        ..PodConfig::new(id, vm_dir, &args.kernel, &args.initrd)
    };
    Ok(Plan { pod, container })
}

/// `--memory` and `--cpus`, parsed.
fn limits(args: &RunArgs) -> Result<Limits, String> {
    let memory = args
        .memory
        .as_deref()
        .map(|m| parse_bytes(m).map_err(|e| format!("--memory {e}")))
        .transpose()?;
    let cpus = args
        .cpus
        .as_deref()
        .map(|c| parse_cpus(c).map_err(|e| format!("--cpus {e}")))
        .transpose()?;
    Ok(Limits { memory, cpus })
}

/// A memory limit too small for a container is refused.
fn check_memory(args: &RunArgs, limits: Limits) -> Result<(), String> {
    match limits.memory {
        Some(m) if m < vpod_sandbox::sizing::MIN_CONTAINER_MIB << 20 => Err(format!(
            "--memory {}: below the {} MiB a container needs",
            args.memory.as_deref().unwrap_or(""),
            vpod_sandbox::sizing::MIN_CONTAINER_MIB
        )),
        _ => Ok(()),
    }
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
