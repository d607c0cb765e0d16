//! vpod's real-KVM test bed.
//!
//! Our machines' `/dev/kvm` is `kvm_pvm`, which can't run a Linux guest's user space. KVM inside a QEMU
//! VM that emulates an AMD CPU with SVM in software (TCG) is real KVM, only slow. The test bed boots such
//! an L1 VM on Debian's generic kernel, shows it the host's own userland (host `/` read-only over 9p with a
//! tmpfs overlay, chosen dirs read-write at their own paths), runs one command there and hands back its
//! stdout, stderr and exit status.
//!
//! - [`probe`]: does this host need the test bed at all?
//! - [`l1`]: L1's boot files (built and cached by `l1/build.sh`).
//! - [`job`]: the script that runs the command in L1.
//! - [`run`](mod@run): boot, watch, time out, retry a hung boot once, clean up.

#![warn(missing_docs)]

mod error;
pub mod job;
pub mod l1;
pub mod probe;
pub mod run;

pub use error::{Error, EXIT_TESTBED_ERROR, EXIT_TIMEOUT};
pub use run::{run, Outcome, RunOptions, Timings};
