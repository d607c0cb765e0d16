//! `vpod run`: one pod with one container, from an image in the store.
//!
//! Foreground: this process boots the pod's VM (in-process), streams the
//! container's output, exits with its code and removes everything. `-d`:
//! the same work runs in a detached supervisor process (`vpod __supervise`)
//! that keeps a record under `<run-dir>/pods/<id>` for `ps`, `logs`, `exec`,
//! `stop` and `rm`.
//!
//! - `plan.rs`: flags and image resolved before anything boots; `spec.rs`: the container's OCI
//!   spec from them (translated by `vpod_sandbox::oci`, as the shim's are);
//! - `drive.rs`: the container's life in the booted pod; `detach.rs`: `-d`.

mod detach;
mod drive;
mod plan;
mod spec;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpod_agent_api::pb::ExitStatus;
use vpod_images::Store;
use vpod_sandbox::Pod;

use crate::args::RunArgs;
use crate::record::{self, Record, Status};
use drive::Output;
use plan::{plan, Plan};

pub use drive::DEFAULT_STOP_GRACE;
pub use spec::CONTAINER_ID;

/// How long the guest has to power off once the container is done.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `vpod run`. Returns the process exit code.
pub async fn run(args: RunArgs, store: &Store, root: &Path, run_dir: &Path) -> Result<u8, String> {
    let id = match &args.name {
        Some(n) => n.clone(),
        None => record::new_id(),
    };
    if !vpod_sandbox::pod::valid_pod_id(&id) {
        return Err(format!("pod name {id:?}: use 1-40 of [a-z0-9-]"));
    }
    let rec = Record::create(run_dir, &id, &args).map_err(|e| e.to_string())?;
    // Resolve everything before booting (or detaching), so bad input fails here.
    let planned = plan(&args, store, &id, &rec.vm_dir());
    let planned = match planned {
        Ok(p) => p,
        Err(e) => {
            rec.remove();
            return Err(e);
        }
    };
    if args.detach {
        drop(planned);
        return detach::detach(rec, root, run_dir).await;
    }
    let result = execute(planned, &rec, Output::Terminal, args.interactive, args.tty).await;
    rec.remove();
    let status = result?;
    if status.oom_killed {
        eprintln!("vpod: container OOMKilled (memory limit)");
    }
    Ok(status.exit_code.clamp(0, 255) as u8)
}

/// `vpod __supervise <record>`: the detached side of `run -d`.
pub async fn supervise(dir: &Path, store: &Store) -> Result<u8, String> {
    let rec = Record::open(dir).map_err(|e| e.to_string())?;
    rec.set_supervisor_self().map_err(|e| e.to_string())?;
    let args = rec.args().map_err(|e| e.to_string())?;
    // The unpack bounds `vpod run` was given (its block image is normally built already).
    let store = store.clone().with_unpack_limits(args.unpack.limits());
    let planned = plan(&args, &store, rec.id(), &rec.vm_dir())?;
    let status = execute(planned, &rec, Output::Supervisor, false, false).await?;
    rec.set_status(&Status::from_exit(&status))
        .map_err(|e| e.to_string())?;
    Ok(0)
}

/// Boots, runs the container to its end, shuts the pod down.
async fn execute(
    plan: Plan,
    rec: &Record,
    output: Output,
    interactive: bool,
    tty: bool,
) -> Result<ExitStatus, String> {
    let t0 = Instant::now();
    let pod = Arc::new(Pod::boot(plan.pod).await.map_err(|e| e.to_string())?);
    let booted = t0.elapsed();
    let result = drive::run_container(&pod, &plan.container, rec, output, interactive, tty).await;
    tracing::info!(boot_ms = booted.as_millis() as u64, "pod {} done", pod.id());
    Pod::finish(pod, SHUTDOWN_TIMEOUT).await;
    result
}
