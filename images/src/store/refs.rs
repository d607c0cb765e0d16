//! Image references: `refs.json` maps names to manifest digests, rewritten whole under
//! `refs.lock`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use super::layout::Store;
use super::private::TempFile;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::reference;

impl Store {
    fn refs_path(&self) -> PathBuf {
        self.dir().join("refs.json")
    }

    fn read_refs(&self) -> Result<BTreeMap<String, Digest>> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::Json {
                what: p.display().to_string(),
                source: e,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).ctx("read", &p),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<()> {
        let (temp, mut f) = TempFile::new(&self.ingest_dir(), "refs")?;
        let data = serde_json::to_vec_pretty(refs).expect("refs serialize");
        f.write_all(&data).ctx("write", &temp.path)?;
        f.sync_all().ctx("fsync", &temp.path)?;
        temp.persist(&self.refs_path())
    }

    /// All references, name -> manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, Digest>> {
        let _l = self.lock("refs.lock", false)?;
        self.read_refs()
    }

    /// Points `name` at `manifest` (the manifest blob must be in the store).
    pub fn set_ref(&self, name: &str, manifest: &Digest) -> Result<()> {
        self.set_refs(&[(name.to_owned(), manifest.clone())])
    }

    /// Points each name at its manifest, all or none (one rewrite of refs.json).
    pub fn set_refs(&self, refs_to_set: &[(String, Digest)]) -> Result<()> {
        for (_, manifest) in refs_to_set {
            if !self.has_blob(manifest) {
                return Err(Error::BlobMissing(manifest.clone()));
            }
        }
        let _l = self.lock("refs.lock", true)?;
        let mut refs = self.read_refs()?;
        for (name, manifest) in refs_to_set {
            refs.insert(name.clone(), manifest.clone());
        }
        self.write_refs(&refs)
    }

    /// Resolves a name (exact, or normalised like `busybox` -> `docker.io/library/busybox:latest`),
    /// a full digest, or a unique digest prefix (at least 12 hex characters).
    pub fn resolve(&self, name: &str) -> Result<Digest> {
        let refs = self.refs()?;
        if let Some(d) = refs.get(name) {
            return Ok(d.clone());
        }
        if let Ok(norm) = reference::normalize(name) {
            if let Some(d) = refs.get(&norm) {
                return Ok(d.clone());
            }
        }
        if let Ok(d) = name.parse::<Digest>() {
            if refs.values().any(|v| *v == d) {
                return Ok(d);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: BTreeSet<&Digest> =
                refs.values().filter(|d| d.hex().starts_with(hex)).collect();
            if found.len() == 1 {
                return Ok((*found.iter().next().unwrap()).clone());
            }
        }
        Err(Error::NotFound(name.to_owned()))
    }

    /// Removes a reference, or every reference to a digest. Refuses while a pod holds a lease on
    /// the image and this is its last reference. Returns the names removed.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        let digest = self.resolve(name)?;
        let _l = self.lock("refs.lock", true)?;
        let mut refs = self.read_refs()?;
        let by_name = refs.contains_key(name)
            || reference::normalize(name).is_ok_and(|n| refs.contains_key(&n));
        let names: Vec<String> = if by_name {
            let n = if refs.contains_key(name) {
                name.to_owned()
            } else {
                reference::normalize(name)?
            };
            vec![n]
        } else {
            refs.iter()
                .filter(|(_, d)| **d == digest)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let remaining = refs
            .iter()
            .filter(|(n, d)| **d == digest && !names.contains(n))
            .count();
        if remaining == 0 {
            let users = self.leases(&digest)?;
            if !users.is_empty() {
                return Err(Error::InUse {
                    reference: name.to_owned(),
                    users,
                });
            }
        }
        for n in &names {
            refs.remove(n);
        }
        self.write_refs(&refs)?;
        Ok(names)
    }
}
