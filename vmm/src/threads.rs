//! What every thread the VMM starts has in common.

/// Stack size of the VMM's own threads (vCPUs, event loop, signals). Smaller than a 2 MiB huge
/// page on purpose: with THP "always" a default 2 MiB stack gets a whole huge page on its first
/// touch, 2 MiB of RSS per thread for a few KiB of real use.
pub const THREAD_STACK_SIZE: usize = 256 << 10;
