//! Leases: one empty file `leases/<hex>/<user>` per pod using an image, which keeps it from `rm`
//! and `prune`.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::layout::Store;
use super::private::{private_dir, private_file};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

impl Store {
    fn lease_dir(&self, d: &Digest) -> PathBuf {
        self.dir().join("leases").join(d.hex())
    }

    /// Marks the image as used by `user` (a pod id): `rm` and `prune` keep it.
    pub fn lease(&self, d: &Digest, user: &str) -> Result<()> {
        if user.is_empty() || user.contains('/') || user.starts_with('.') {
            return Err(Error::BadReference {
                reference: user.to_owned(),
                reason: "lease holder must be a plain name".into(),
            });
        }
        let dir = self.lease_dir(d);
        private_dir(&dir)?;
        let p = dir.join(user);
        private_file(&p, false).ctx("create", &p)?;
        Ok(())
    }

    /// Drops `user`'s lease (none is fine).
    pub fn release(&self, d: &Digest, user: &str) -> Result<()> {
        let p = self.lease_dir(d).join(user);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", &p),
        }
    }

    /// The holders of leases on the image.
    pub fn leases(&self, d: &Digest) -> Result<Vec<String>> {
        let dir = self.lease_dir(d);
        match fs::read_dir(&dir) {
            Ok(rd) => Ok(rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).ctx("read directory", &dir),
        }
    }
}
