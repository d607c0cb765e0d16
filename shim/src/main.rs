//! `containerd-shim-vpod-v2`: containerd's runtime `io.containerd.vpod.v2`.
//! One shim process per pod, which owns the pod's microVM in-process.
//!
//! By role: `shim.rs` is the shim's lifecycle (start, delete after a crash,
//! with `marker.rs`), `task.rs` the Task RPCs over the pod's tasks
//! (`container.rs`) and execs (`exec.rs`), each a `process.rs` Process;
//! `pod.rs` the pod's VM and every call into it; `io.rs` containerd's FIFOs;
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

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<shim::VpodShim>(
        "io.containerd.vpod.v2",
        Some(reaping::shim_config()),
    )
    .await;
    // Exit now: dropping the runtime would wait for any blocking task still
    // running, and the VM's threads end with the process anyway.
    std::process::exit(0)
}
