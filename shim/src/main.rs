//! `containerd-shim-vpod-v2`: containerd's runtime `io.containerd.vpod.v2`.
//! One shim process per pod, which owns the pod's microVM in-process.

mod config;
mod error;
mod events;
mod io;
mod marker;
mod process;
mod reaping;
mod rootfs;
mod service;
mod shim;

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
