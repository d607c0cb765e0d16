//! vpod's fuzz targets, as library functions: each `fuzz_targets/<name>.rs` calls `<name>::run`
//! on the structured input `arbitrary` decodes, so a crash input can later be replayed from a
//! plain test.
//!
//! - [`driver`]: a malicious guest driver over mock guest memory (descriptor tables, avail rings,
//!   indices and payloads written as the input says), and a fixture running one device in an
//!   event manager as the VMM does.
//! - [`enc`]: the inverse of `arbitrary`'s decoding for these inputs, to write seed corpora
//!   (`cargo run --example seeds`).
//!
//! Every loop a target runs is bounded by the input's length or a constant, so a hang means the
//! code under test spins (libFuzzer's `-timeout` turns it into a failure).

pub mod block;
pub mod driver;
pub mod enc;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod oci;
pub mod rng;
pub mod unpack;
pub mod vsock;
