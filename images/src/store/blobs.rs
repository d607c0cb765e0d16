//! Blobs by sha256: written through a hashing writer and renamed into place only when the digest
//! (and size) match; read back verified.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::layout::Store;
use super::private::TempFile;
use crate::digest::{Digest, Hasher, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Parsed};

/// An open blob write: feed it bytes, then `commit` checks the digest and renames it into place.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    temp: TempFile,
    out: HashingWriter<BufWriter<File>>,
}

impl BlobWriter {
    /// Appends `data` to the blob.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).ctx("write", &self.temp.path)
    }

    /// Verifies digest (and size, when known) and publishes the blob. On any mismatch the temp
    /// file is removed and nothing is served.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let BlobWriter {
            store,
            temp,
            mut out,
        } = self;
        out.flush().ctx("write", &temp.path)?;
        let len = out.hasher.len();
        let digest = out.hasher.finish();
        if let Some(want) = expected {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: what.to_owned(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        if let Some(want) = expected_size {
            if want != len {
                return Err(Error::SizeMismatch {
                    what: what.to_owned(),
                    expected: want,
                    actual: len,
                });
            }
        }
        let file = out.inner.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: temp.path.clone(),
            source: e.into_error(),
        })?;
        // Data reaches the disk before the name does: a crash never leaves a named, torn blob.
        file.sync_all().ctx("fsync", &temp.path)?;
        let dest = store.blob_path(&digest);
        if !dest.exists() {
            temp.persist(&dest)?;
        }
        Ok((digest, len))
    }
}

impl Store {
    /// Whether blob `d` is stored.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Starts writing a blob whose digest is checked at `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let (temp, file) = TempFile::new(&self.ingest_dir(), "blob")?;
        Ok(BlobWriter {
            store: self.clone(),
            temp,
            out: HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: Hasher::default(),
            },
        })
    }

    /// Copies `r` into the store. With `expected`, a mismatch is an error and nothing is kept.
    pub fn ingest(
        &self,
        mut r: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                return Ok((
                    d.clone(),
                    fs::metadata(self.blob_path(d)).map_or(0, |m| m.len()),
                ));
            }
        }
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        op: "read",
                        path: PathBuf::from(what),
                        source: e,
                    })
                }
            };
            w.write_all(&buf[..n])?;
        }
        w.commit(expected, expected_size, what)
    }

    /// [`Store::ingest`] of a byte slice (its size is the expected size).
    pub fn ingest_bytes(
        &self,
        data: &[u8],
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Digest> {
        Ok(self
            .ingest(data, expected, Some(data.len() as u64), what)?
            .0)
    }

    /// Opens a blob for streaming; the reader checks the digest when `finish`ed.
    pub fn open_blob(&self, d: &Digest) -> Result<HashingReader<File>> {
        let p = self.blob_path(d);
        match File::open(&p) {
            Ok(f) => Ok(HashingReader::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobMissing(d.clone())),
            Err(e) => Err(e).ctx("open", &p),
        }
    }

    /// Re-hashes a stored blob: an error if it is missing or its content changed.
    pub fn verify_blob(&self, d: &Digest) -> Result<()> {
        let (actual, _) = self
            .open_blob(d)?
            .finish()
            .ctx("read", &self.blob_path(d))?;
        if actual != *d {
            return Err(Error::BlobCorrupted {
                digest: d.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Reads a whole (small) blob and verifies it.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let data = match fs::read(&p) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BlobMissing(d.clone()))
            }
            Err(e) => return Err(e).ctx("read", &p),
        };
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(Error::BlobCorrupted {
                digest: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Reads a manifest from the store (an index is resolved to its linux/amd64 manifest).
    pub fn manifest(&self, d: &Digest) -> Result<(Digest, oci::Manifest)> {
        let data = self.read_blob(d)?;
        match oci::parse_manifest(&data, None, &format!("manifest {d}"))? {
            Parsed::Manifest(m) => Ok((d.clone(), m)),
            Parsed::Index(i) => {
                let desc = oci::pick_platform(&i).ok_or_else(|| Error::NoPlatform(d.clone()))?;
                let data = self.read_blob(&desc.digest)?;
                match oci::parse_manifest(&data, None, &format!("manifest {}", desc.digest))? {
                    Parsed::Manifest(m) => Ok((desc.digest.clone(), m)),
                    Parsed::Index(_) => Err(Error::UnknownMediaType {
                        what: format!("manifest {}", desc.digest),
                        media_type: "nested index".into(),
                    }),
                }
            }
        }
    }
}
