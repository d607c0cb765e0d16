//! `containerd-shim-vpod-v2`: containerd's runtime `io.containerd.vpod.v2`.
//! One shim process per pod, which owns the pod's microVM in-process.
//!
//! By role: `shim.rs` is the shim's lifecycle (start, delete after a crash,
//! with `marker.rs`), `task.rs` the Task RPCs over the pod's tasks
//! (`container.rs`) and execs (`exec.rs`), each a `process.rs` Process;
//! `pod.rs` the pod's VM (its size, boot and teardown; every call into it
//! goes through `vpod_sandbox::Pod`'s front); `io.rs` containerd's FIFOs;
//! `events.rs` and `stats.rs` what containerd is told; `error.rs` the ttrpc
//! code of each failure.

mod config;
mod container;
mod error;
mod events;
mod exec;
mod io;
mod marker;
mod pod;
mod process;
mod reaping;
mod rootfs;
mod shim;
mod stats;
mod task;

use std::time::Duration;

/// How long `delete` may take to hand its answer to containerd.
const DELETE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let delete = containerd_shim::parse(&args).is_ok_and(|f| f.action == "delete");
    let rt = tokio::runtime::Runtime::new().expect("the shim's tokio runtime");
    rt.block_on(containerd_shim::asynchronous::run::<shim::VpodShim>(
        "io.containerd.vpod.v2",
        Some(reaping::shim_config()),
    ));
    if delete {
        // `delete` writes its DeleteResponse through tokio's stdout, which
        // hands the write to a blocking thread and does not flush it: wait
        // for that thread, or containerd may read nothing (no VM runs here).
        rt.shutdown_timeout(DELETE_ANSWER_TIMEOUT);
    }
    // Exit now: dropping the runtime would wait for any blocking task still
    // running, and the VM's threads end with the process anyway.
    std::process::exit(0)
}
