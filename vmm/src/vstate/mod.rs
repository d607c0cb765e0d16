//! KVM state: guest memory, the VM, vCPU threads.
pub mod memory;
pub mod vcpu;
pub mod vm;
