//! Import of OCI image layouts (directory or tar) and `docker save` archives (old layout with
//! `<id>/layer.tar`, and Docker 25+'s, which is an OCI layout plus `manifest.json`).
//! Every blob is verified against its digest on its way into the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::blockimg::{BlockImage, FsType};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Manifest, Parsed};
use crate::reference;
use crate::store::Store;

/// One image an import stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Imported {
    /// The reference it is stored under.
    pub name: String,
    /// Its manifest (or index) digest.
    pub manifest: Digest,
}

/// Files of an archive or directory, by their path inside it.
trait Source {
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64)>;
    fn exists(&self, path: &str) -> bool;
    fn origin(&self) -> &Path;

    fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let (mut r, size) = self.open(path)?;
        if size > 64 << 20 {
            return Err(self.bad(format!(
                "{path} is {size} bytes: too big for a JSON document"
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v)
            .ctx("read", &self.origin().join(path))?;
        Ok(v)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadArchive {
            path: self.origin().to_owned(),
            reason,
        }
    }
}

struct DirSource(PathBuf);

impl Source for DirSource {
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let p = self.0.join(checked(path).map_err(|r| self.bad(r))?);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.bad(format!("{path} is missing")),
            _ => Error::Io {
                op: "open",
                path: p.clone(),
                source: e,
            },
        })?;
        let len = f.metadata().ctx("stat", &p)?.len();
        Ok((Box::new(f), len))
    }

    fn exists(&self, path: &str) -> bool {
        checked(path).is_ok_and(|p| self.0.join(p).is_file())
    }

    fn origin(&self) -> &Path {
        &self.0
    }
}

/// A tar file indexed once (headers only), then read at offsets.
struct TarSource {
    path: PathBuf,
    files: HashMap<String, (u64, u64)>,
    links: HashMap<String, String>,
}

impl TarSource {
    fn index(path: &Path) -> Result<TarSource> {
        let mut f = File::open(path).ctx("open", path)?;
        let len = f.metadata().ctx("stat", path)?.len();
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).ctx("read", path)?;
        let bad = |reason: String| Error::BadArchive {
            path: path.to_owned(),
            reason,
        };
        if magic[..n].starts_with(&[0x1f, 0x8b])
            || magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        {
            return Err(bad(
                "compressed archive: decompress it first (want a plain tar)".into(),
            ));
        }
        f.seek(SeekFrom::Start(0)).ctx("seek", path)?;
        let mut archive = tar::Archive::new(f);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| bad(format!("truncated or corrupt tar: {e}")))?;
            let name = norm(&String::from_utf8_lossy(&e.path_bytes()));
            let (pos, size) = (e.raw_file_position(), e.size());
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if pos + size > len {
                        return Err(bad(format!(
                            "truncated tar: {name} needs {size} bytes at offset {pos}, the file has {len}"
                        )));
                    }
                    files.insert(name, (pos, size));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Ok(Some(t)) = e.link_name() {
                        let t = t.to_string_lossy().into_owned();
                        let target = if e.header().entry_type() == tar::EntryType::Symlink {
                            // relative to the link's directory
                            let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                            norm(&dir.join(t).to_string_lossy())
                        } else {
                            norm(&t)
                        };
                        links.insert(name, target);
                    }
                }
                _ => {}
            }
        }
        if files.is_empty() {
            return Err(bad("empty or not a tar archive".into()));
        }
        Ok(TarSource {
            path: path.to_owned(),
            files,
            links,
        })
    }

    fn lookup(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = norm(path);
        for _ in 0..8 {
            if let Some(v) = self.files.get(&p) {
                return Some(*v);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

impl Source for TarSource {
    fn open(&self, path: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let (pos, size) = self
            .lookup(path)
            .ok_or_else(|| self.bad(format!("{path} is missing from the archive")))?;
        let mut f = File::open(&self.path).ctx("open", &self.path)?;
        f.seek(SeekFrom::Start(pos)).ctx("seek", &self.path)?;
        Ok((Box::new(f.take(size)), size))
    }

    fn exists(&self, path: &str) -> bool {
        self.lookup(path).is_some()
    }

    fn origin(&self) -> &Path {
        &self.path
    }
}

/// Normalises a path inside an archive: no `./`, no leading `/`, `..` folded.
fn norm(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Refuses paths that leave the import directory.
fn checked(path: &str) -> std::result::Result<&str, String> {
    if path.starts_with('/') || path.split('/').any(|c| c == "..") {
        Err(format!("path {path:?} leaves the image directory"))
    } else {
        Ok(path)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Json {
        what: what.to_owned(),
        source: e,
    })
}

/// Copies one described blob from the source into the store (verified).
fn copy_blob(store: &Store, src: &dyn Source, desc: &Descriptor, what: &str) -> Result<()> {
    if store.has_blob(&desc.digest) {
        return Ok(());
    }
    let (r, _) = src.open(&blob_path(&desc.digest))?;
    let what = format!("{what} {} in {}", desc.digest, src.origin().display());
    store.ingest(r, Some(&desc.digest), Some(desc.size), &what)?;
    Ok(())
}

/// Stores a manifest (or index -> its linux/amd64 manifest) and everything it names.
/// Returns the image manifest's digest.
fn copy_image(store: &Store, src: &dyn Source, desc: &Descriptor) -> Result<Digest> {
    copy_blob(store, src, desc, "manifest")?;
    let data = store.read_blob(&desc.digest)?;
    let what = format!("manifest {}", desc.digest);
    match oci::parse_manifest(&data, Some(&desc.media_type), &what)? {
        Parsed::Index(index) => {
            let d = oci::pick_platform(&index)
                .or_else(|| (index.manifests.len() == 1).then(|| &index.manifests[0]))
                .ok_or_else(|| Error::NoPlatform(desc.digest.clone()))?;
            copy_image(store, src, d)
        }
        Parsed::Manifest(m) => {
            copy_blob(store, src, &m.config, "config")?;
            for l in &m.layers {
                copy_blob(store, src, l, "layer")?;
            }
            Ok(desc.digest.clone())
        }
    }
}

#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Imports a `docker save` entry: blobs are ingested as they are and a Docker schema 2
/// manifest is written for them.
fn copy_docker_save(store: &Store, src: &dyn Source, e: &DockerSaveEntry) -> Result<Digest> {
    let ingest = |path: &str, what: &str| -> Result<(Digest, u64, String)> {
        let expected = path
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::from_hex(h).ok());
        let (mut r, size) = src.open(path)?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut r, &mut head).ctx("read", &src.origin().join(path))?;
        let media_type = if head[..n].starts_with(&[0x1f, 0x8b]) {
            oci::DOCKER_LAYER_GZIP
        } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            oci::OCI_LAYER_ZSTD
        } else {
            oci::DOCKER_LAYER_TAR
        };
        let r = io::Cursor::new(head[..n].to_vec()).chain(r);
        let what = format!("{what} {path} in {}", src.origin().display());
        let (d, len) = store.ingest(r, expected.as_ref(), Some(size), &what)?;
        Ok((d, len, media_type.to_owned()))
    };
    let (config_digest, config_size, _) = ingest(&e.config, "config")?;
    let mut layers = Vec::new();
    for l in &e.layers {
        let (digest, size, media_type) = ingest(l, "layer")?;
        layers.push(Descriptor {
            media_type,
            digest,
            size,
            platform: None,
            annotations: Default::default(),
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::DOCKER_MANIFEST.to_owned()),
        config: Descriptor {
            media_type: oci::DOCKER_CONFIG.to_owned(),
            digest: config_digest,
            size: config_size,
            platform: None,
            annotations: Default::default(),
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    store.ingest_bytes(&bytes, None, "generated manifest")
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A name for an image from an OCI layout: a full reference annotation as it is, a bare tag
/// under `localhost/<file stem>`.
fn layout_name(desc: &Descriptor, origin: &Path) -> Option<String> {
    if let Some(n) = desc.annotations.get("io.containerd.image.name") {
        return reference::normalize(n).ok();
    }
    let n = desc.annotations.get("org.opencontainers.image.ref.name")?;
    if n.contains('/') || n.contains(':') {
        return reference::normalize(n).ok();
    }
    let stem = origin
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.split('.').next().unwrap_or("image").to_lowercase();
    let stem: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    reference::normalize(&format!("localhost/{}:{n}", stem.trim_matches('-'))).ok()
}

/// Imports an OCI layout (directory or tar) or a `docker save` tar. `name`, when given, names a
/// single imported image (it replaces the names inside the archive). All names are set at once
/// at the end: a failed import names nothing.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Vec<Imported>> {
    Ok(import_with(store, path, name, None)?
        .into_iter()
        .map(|(i, _)| i)
        .collect())
}

/// [`import`], then builds each image's block image before any name is set: when a build fails
/// (a layer that doesn't unpack, an unpack limit, mkfs), the error is returned and no name of
/// the archive is set (names that existed before stay as they were).
pub fn import_and_build(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    fs_type: FsType,
) -> Result<Vec<(Imported, BlockImage)>> {
    Ok(import_with(store, path, name, Some(fs_type))?
        .into_iter()
        .map(|(i, b)| (i, b.expect("built")))
        .collect())
}

fn import_with(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    build: Option<FsType>,
) -> Result<Vec<(Imported, Option<BlockImage>)>> {
    let meta = std::fs::metadata(path).ctx("stat", path)?;
    let src: Box<dyn Source> = if meta.is_dir() {
        Box::new(DirSource(path.to_owned()))
    } else {
        Box::new(TarSource::index(path)?)
    };
    let name = name.map(reference::normalize).transpose()?;
    let _writers = store.writer_guard()?;
    let mut images: Vec<(Option<String>, Digest)> = Vec::new();
    if src.exists("index.json") && src.exists("oci-layout") {
        let index: oci::Index = json(&src.read_small("index.json")?, "index.json")?;
        for desc in &index.manifests {
            let d = copy_image(store, src.as_ref(), desc)?;
            images.push((layout_name(desc, src.origin()), d));
        }
        // Docker 25+ saves both: its manifest.json carries the repo tags.
        if src.exists("manifest.json") {
            if let Ok(entries) =
                json::<Vec<DockerSaveEntry>>(&src.read_small("manifest.json")?, "manifest.json")
            {
                for (e, (n, _)) in entries.iter().zip(images.iter_mut()) {
                    if let Some(t) = e.repo_tags.as_ref().and_then(|t| t.first()) {
                        *n = n.take().or_else(|| reference::normalize(t).ok());
                    }
                }
            }
        }
    } else if src.exists("manifest.json") {
        let entries: Vec<DockerSaveEntry> =
            json(&src.read_small("manifest.json")?, "manifest.json")?;
        for e in &entries {
            let d = copy_docker_save(store, src.as_ref(), e)?;
            let tags = e.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                images.push((None, d.clone()));
            }
            for t in tags {
                images.push((Some(reference::normalize(&t)?), d.clone()));
            }
        }
    } else {
        return Err(src.bad(
            "neither an OCI image layout (oci-layout + index.json) nor a docker save archive (manifest.json)"
                .into(),
        ));
    }
    if images.is_empty() {
        return Err(src.bad("the archive holds no image".into()));
    }
    if let Some(n) = name {
        let distinct: std::collections::BTreeSet<_> = images.iter().map(|(_, d)| d).collect();
        if distinct.len() != 1 {
            return Err(src.bad(format!(
                "holds {} images: a name can only be given to one",
                distinct.len()
            )));
        }
        let d = images[0].1.clone();
        images = vec![(Some(n), d)];
    }
    let mut built: HashMap<Digest, BlockImage> = HashMap::new();
    if let Some(fs_type) = build {
        for (_, d) in &images {
            if !built.contains_key(d) {
                built.insert(d.clone(), store.ensure_block_image(d, fs_type)?);
            }
        }
    }
    let named: Vec<(String, Digest)> = images
        .into_iter()
        .map(|(n, d)| (n.unwrap_or_else(|| d.to_string()), d))
        .collect();
    store.set_refs(&named)?;
    Ok(named
        .into_iter()
        .map(|(n, d)| {
            let b = built.get(&d).cloned();
            (
                Imported {
                    name: n,
                    manifest: d,
                },
                b,
            )
        })
        .collect())
}
