//! The content store: blobs by sha256 (verified on write, renamed into place only when whole),
//! image references -> manifest digests, leases held by pods, and garbage collection.
//!
//! Layout under `<root>/images/`:
//! ```text
//! blobs/sha256/<hex>        verified content, never modified
//! ingest/                   temp files being written (never served; removed on error or by prune)
//! refs.json                 {"docker.io/library/busybox:latest": "sha256:..."}   (under refs.lock)
//! disks/<hex>.erofs|.ext4   block image of manifest <hex>, and <hex>.json its ImageInfo
//! leases/<hex>/<user>       a pod using the image: `rm` refuses while one exists
//! work/<id>/rootfs          unpack trees while a block image is built
//! ```
//! An unpacked tree holds the image's setuid-root files and device nodes as they are, so no one
//! but root may reach into the store: every directory of it is 0700 and every file it writes
//! 0600, set explicitly (whatever the umask), and `open` puts those modes back on an existing
//! store's directories.
//! Two processes may use one store: blob writes are atomic renames, refs.json is rewritten under
//! an exclusive flock, and prune takes `gc.lock` exclusively while every writer holds it shared.

mod blobs;
mod gc;
mod layout;
mod leases;
mod private;
mod refs;

pub use blobs::BlobWriter;
pub use gc::{PruneReport, Usage};
pub use layout::Store;
pub(crate) use private::{private_dir, TempFile};
pub use private::{DIR_MODE, FILE_MODE};
