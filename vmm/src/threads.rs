//! What every thread the VMM starts has in common.

/// Stack size of the VMM's own threads (vCPUs, event loop, signals). Smaller than a 2 MiB huge
/// page on purpose: with THP "always" a default 2 MiB stack gets a whole huge page on its first
/// touch, 2 MiB of RSS per thread for a few KiB of real use.
pub const THREAD_STACK_SIZE: usize = 256 << 10;

/// The seccomp filter each kind of VM thread installs first thing (built by the jailed VMM from
/// `vpod_jail::seccomp`): a vCPU before its first KVM_RUN, the event loop before it polls.
#[derive(Debug, Clone)]
pub struct ThreadFilters {
    /// For each vCPU thread.
    pub vcpu: seccompiler::BpfProgram,
    /// For the device event loop.
    pub event_loop: seccompiler::BpfProgram,
}

/// Installs `filter` on the calling thread (nothing for `None`).
pub fn apply_filter(filter: Option<&seccompiler::BpfProgram>) -> std::io::Result<()> {
    match filter {
        Some(f) => seccompiler::apply_filter(f).map_err(std::io::Error::other),
        None => Ok(()),
    }
}
