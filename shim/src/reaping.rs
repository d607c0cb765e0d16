//! Who waits for the shim's children.
//!
//! containerd-shim's default is a reaper: on every SIGCHLD it calls
//! `waitpid(-1)` until nothing is left. That steals the exit status of every
//! `std::process::Command` the shim runs (mkfs.erofs, mkfs.ext4, ip, tc,
//! nsenter): when the reaper wins, the command's own `waitpid(pid)` fails with
//! ECHILD ("No child processes") and the task's Create fails.
//!
//! vpod's shim has no container processes on the host (they live in the
//! guest), so it needs neither the reaper nor to be a subreaper: every child
//! is waited for by the code that spawned it, and a grandchild orphaned by one
//! of our commands is re-parented to the next subreaper up (containerd,
//! systemd) or to init, which reap it. Nothing is left for the shim to reap,
//! so there is no "reap only what is not ours" to get wrong.

/// The containerd-shim settings `main` runs the shim with. They must be
/// passed to `run` itself: the crate installs its SIGCHLD handler and the
/// subreaper bit before `Shim::new` sees the config.
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}
