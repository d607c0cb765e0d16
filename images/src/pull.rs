//! Registry pull (distribution API v2) with the `oci-client` crate: tags and digests, index ->
//! linux/amd64, anonymous/basic/bearer auth, plain HTTP only for loopback hosts or a configured
//! insecure list, mirrors tried before the upstream, layers fetched in parallel, blobs already
//! in the store not fetched again. Every blob is verified before the store serves it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

pub use oci_client::secrets::RegistryAuth;

use crate::blockimg::{BlockImage, FsType};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, Parsed};
use crate::reference;
use crate::store::Store;

/// Registry settings, one TOML file (the parts of containerd's hosts.toml vpod needs):
/// ```toml
/// insecure = ["registry.lan:5000"]          # plain HTTP (loopback hosts always are)
/// max_concurrent_downloads = 4
/// [mirrors]
/// "docker.io" = ["127.0.0.1:5000"]          # tried in order, then docker.io itself
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Per registry, the mirrors tried (in order) before it.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Blobs fetched at once (4 when unset).
    #[serde(default)]
    pub max_concurrent_downloads: Option<usize>,
}

impl RegistryConfig {
    /// Reads the config file; a missing file is the default config.
    pub fn load(path: &Path) -> Result<RegistryConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(Error::Config {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Plain HTTP only for loopback hosts and those listed as insecure.
    pub fn plain_http(&self, host: &str) -> bool {
        let name = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name == "localhost"
            || name == "::1"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
            || self.insecure.iter().any(|h| h == host || h == name)
    }

    /// Hosts to try for a registry, mirrors first.
    fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut v = self.mirrors.get(registry).cloned().unwrap_or_default();
        v.push(registry.to_owned());
        v
    }
}

/// Pull progress, reported as it happens.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The manifest is known; the missing blobs are fetched next.
    Resolved {
        /// The platform manifest pulled.
        manifest: Digest,
        /// The registry or mirror that answered.
        endpoint: String,
        /// Blobs of the image (config and layers).
        blobs: usize,
        /// Of those, the ones not in the store yet.
        missing: usize,
        /// Bytes of the missing blobs.
        bytes: u64,
    },
    /// One blob fetched and verified.
    BlobDone {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

/// What a pull did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Pulled {
    /// The reference it is stored under.
    pub name: String,
    /// The manifest (or index) the reference points at.
    pub manifest: Digest,
    /// The registry or mirror it came from.
    pub endpoint: String,
    /// Blobs downloaded.
    pub fetched_blobs: usize,
    /// Bytes downloaded.
    pub fetched_bytes: u64,
    /// Blobs already in the store.
    pub reused_blobs: usize,
}

fn client_for(host: &str, cfg: &RegistryConfig) -> Client {
    Client::new(ClientConfig {
        protocol: if cfg.plain_http(host) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..ClientConfig::default()
    })
}

/// The reference as seen on `host` (a mirror keeps the repository, tag and digest).
fn on_host(r: &Reference, host: &str) -> Reference {
    let (repo, tag, digest) = (r.repository().to_owned(), r.tag(), r.digest());
    match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(host.to_owned(), repo, t.to_owned(), d.to_owned())
        }
        (_, Some(d)) => Reference::with_digest(host.to_owned(), repo, d.to_owned()),
        (t, None) => Reference::with_tag(host.to_owned(), repo, t.unwrap_or("latest").to_owned()),
    }
}

/// Pulls `image` into the store and names it. Tries each mirror, then the registry itself.
/// A failed pull names nothing (a name it had before stays as it was).
pub async fn pull(
    store: &Store,
    image: &str,
    auth: &RegistryAuth,
    cfg: &RegistryConfig,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Pulled> {
    Ok(pull_with(store, image, auth, cfg, progress, None).await?.0)
}

/// [`pull`], then builds the image's block image before naming it: when the build fails (a
/// layer that doesn't unpack, an unpack limit, mkfs), the error is returned and the name is
/// not set (a name it had before stays as it was).
pub async fn pull_and_build(
    store: &Store,
    image: &str,
    auth: &RegistryAuth,
    cfg: &RegistryConfig,
    progress: &(dyn Fn(Progress) + Send + Sync),
    fs_type: FsType,
) -> Result<(Pulled, BlockImage)> {
    let (p, b) = pull_with(store, image, auth, cfg, progress, Some(fs_type)).await?;
    Ok((p, b.expect("built")))
}

async fn pull_with(
    store: &Store,
    image: &str,
    auth: &RegistryAuth,
    cfg: &RegistryConfig,
    progress: &(dyn Fn(Progress) + Send + Sync),
    build: Option<FsType>,
) -> Result<(Pulled, Option<BlockImage>)> {
    // Held from the first blob to the name: prune keeps what the pull wrote meanwhile.
    let _writers = store.writer_guard()?;
    let r = reference::parse(image)?;
    let name = r.whole();
    let upstream = r.resolve_registry().to_owned();
    let mut last = None;
    for host in cfg.endpoints(r.registry()) {
        let host = if host == r.registry() {
            upstream.clone()
        } else {
            host
        };
        match pull_from(store, &r, &host, auth, cfg, progress).await {
            Ok(mut p) => {
                p.name = name.clone();
                let built = match build {
                    None => None,
                    Some(fs_type) => {
                        let (store, md) = (store.clone(), p.manifest.clone());
                        let b = tokio::task::spawn_blocking(move || {
                            store.ensure_block_image(&md, fs_type)
                        })
                        .await
                        .map_err(|e| Error::Tool {
                            tool: "block image build".into(),
                            reason: format!("the build thread failed: {e}"),
                        })??;
                        Some(b)
                    }
                };
                store.set_ref(&name, &p.manifest)?;
                return Ok((p, built));
            }
            Err(e) => {
                tracing::warn!(endpoint = %host, error = %e, "pull failed");
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least the registry itself is tried"))
}

async fn pull_from(
    store: &Store,
    r: &Reference,
    host: &str,
    auth: &RegistryAuth,
    cfg: &RegistryConfig,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Pulled> {
    let client = client_for(host, cfg);
    let hr = on_host(r, host);
    let reg_err = |e: oci_client::errors::OciDistributionError| Error::Registry {
        reference: r.whole(),
        registry: host.to_owned(),
        source: Box::new(e),
    };
    let _writers = store.writer_guard()?;
    let wanted: Option<Digest> = r.digest().map(str::parse).transpose()?;
    let (bytes, _) = client
        .pull_manifest_raw(&hr, auth, &oci::MANIFEST_TYPES)
        .await
        .map_err(reg_err)?;
    let what = format!("manifest of {}", r.whole());
    let top = store.ingest_bytes(&bytes, wanted.as_ref(), &what)?;
    let (manifest_digest, manifest) = match oci::parse_manifest(&bytes, None, &what)? {
        Parsed::Manifest(m) => (top, m),
        Parsed::Index(index) => {
            let d = oci::pick_platform(&index).ok_or_else(|| Error::NoPlatform(top.clone()))?;
            let (mbytes, _) = client
                .pull_manifest_raw(
                    &hr.clone_with_digest(d.digest.to_string()),
                    auth,
                    &oci::MANIFEST_TYPES,
                )
                .await
                .map_err(reg_err)?;
            let what = format!("linux/amd64 manifest of {}", r.whole());
            let md = store.ingest_bytes(&mbytes, Some(&d.digest), &what)?;
            match oci::parse_manifest(&mbytes, Some(&d.media_type), &what)? {
                Parsed::Manifest(m) => (md, m),
                Parsed::Index(_) => {
                    return Err(Error::UnknownMediaType {
                        what,
                        media_type: "nested index".into(),
                    })
                }
            }
        }
    };
    let all: Vec<&Descriptor> = std::iter::once(&manifest.config)
        .chain(manifest.layers.iter())
        .collect();
    let missing: Vec<&Descriptor> = all
        .iter()
        .copied()
        .filter(|d| !store.has_blob(&d.digest))
        .collect();
    progress(Progress::Resolved {
        manifest: manifest_digest.clone(),
        endpoint: host.to_owned(),
        blobs: all.len(),
        missing: missing.len(),
        bytes: missing.iter().map(|d| d.size).sum(),
    });
    let parallel = cfg.max_concurrent_downloads.unwrap_or(4).max(1);
    let fetched: Vec<u64> =
        futures::stream::iter(missing.iter().copied())
            .map(|d| {
                let (client, hr) = (&client, &hr);
                async move {
                    let mut s = client
                        .pull_blob_stream(hr, d.digest.as_str())
                        .await
                        .map_err(reg_err)?;
                    let mut w = store.blob_writer()?;
                    while let Some(chunk) = s.stream.try_next().await.map_err(|e| {
                        reg_err(oci_client::errors::OciDistributionError::IoError(e))
                    })? {
                        w.write_all(&chunk)?;
                    }
                    let what = format!("blob {} of {}", d.digest, r.whole());
                    let (digest, size) = w.commit(Some(&d.digest), Some(d.size), &what)?;
                    progress(Progress::BlobDone { digest, size });
                    Ok::<u64, Error>(size)
                }
            })
            .buffer_unordered(parallel)
            .try_collect()
            .await?;
    // Manifest and config must parse before the image is named.
    store.read_blob(&manifest.config.digest)?;
    Ok(Pulled {
        name: String::new(),
        manifest: manifest_digest,
        endpoint: host.to_owned(),
        fetched_blobs: fetched.len(),
        fetched_bytes: fetched.iter().sum(),
        reused_blobs: all.len() - fetched.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let cfg: RegistryConfig = toml::from_str(
            "insecure = [\"registry.lan:5000\"]\n[mirrors]\n\"docker.io\" = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "registry.lan:5000",
        ] {
            assert!(cfg.plain_http(h), "{h}");
        }
        for h in [
            "docker.io",
            "registry.lan:5001",
            "10.0.0.1:5000",
            "localhost.evil.com",
        ] {
            assert!(!cfg.plain_http(h), "{h}");
        }
        assert_eq!(
            cfg.endpoints("docker.io"),
            vec!["127.0.0.1:5000".to_string(), "docker.io".to_string()]
        );
        assert!(toml::from_str::<RegistryConfig>("bogus = 1").is_err());
    }
}
