//! `containerd-shim-vpod-v2`: containerd's runtime `io.containerd.vpod.v2`.
//! One shim process per pod, which owns the pod's microVM in-process.

mod rootfs;
mod service;

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<service::VpodShim>("io.containerd.vpod.v2", None).await;
}
