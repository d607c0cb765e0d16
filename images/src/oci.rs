//! The parts of the OCI image spec (and Docker's schema 2, its twin) that vpod reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (one manifest per platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, plain tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer, plain tar (deprecated by the spec, still read).
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer, gzip-compressed tar.
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (schema 2's index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, plain tar.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Manifest media types a registry may answer with for an image reference.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

const LAYER_TYPES: [&str; 7] = [
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST_TAR,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
];

/// The platform an index entry is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    /// CPU architecture in Go's terms (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture variant (`v8`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A reference to a blob: its type, digest and size.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is (one of the media types above).
    pub media_type: String,
    /// Its content digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// In an index: the platform the manifest is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form metadata (`org.opencontainers.image.ref.name` names an image in a layout).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest: its configuration and layers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image configuration blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image index (or Docker manifest list): one manifest per platform.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, with their platforms.
    pub manifests: Vec<Descriptor>,
}

/// What a manifest-shaped document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A single-platform manifest.
    Manifest(Manifest),
    /// An index of manifests.
    Index(Index),
}

/// Parses a manifest or index, by its declared media type (the `mediaType` field, else the
/// transport's), and refuses anything else: schema 1, artifacts, unknown types.
pub fn parse_manifest(bytes: &[u8], transport_type: Option<&str>, what: &str) -> Result<Parsed> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let json = |e| Error::Json {
        what: what.to_owned(),
        source: e,
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| transport_type.map(str::to_owned))
        // An OCI manifest may omit mediaType: tell it by its shape.
        .or_else(|| match (&probe.manifests, &probe.config) {
            (Some(_), None) => Some(OCI_INDEX.to_owned()),
            (None, Some(_)) => Some(OCI_MANIFEST.to_owned()),
            _ => None,
        })
        .unwrap_or_default();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest = serde_json::from_slice(bytes).map_err(json)?;
            for l in &m.layers {
                check_layer_type(&l.media_type, what)?;
            }
            Ok(Parsed::Manifest(m))
        }
        OCI_INDEX | DOCKER_LIST => Ok(Parsed::Index(serde_json::from_slice(bytes).map_err(json)?)),
        other => Err(Error::UnknownMediaType {
            what: what.to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

fn check_layer_type(media_type: &str, what: &str) -> Result<()> {
    if LAYER_TYPES.contains(&media_type) {
        Ok(())
    } else {
        Err(Error::UnknownMediaType {
            what: format!("{what}: layer"),
            media_type: media_type.to_owned(),
        })
    }
}

/// Picks the linux/amd64 entry of an index (the only platform vpod's guests run).
pub fn pick_platform(index: &Index) -> Option<&Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    })
}

/// The image configuration blob (the fields vpod uses).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// CPU architecture the image is built for.
    #[serde(default)]
    pub architecture: String,
    /// Operating system it is built for.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    /// Its layers' uncompressed digests.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `rootfs` inside the image configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// The digest of each layer's uncompressed tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// `config` inside the image configuration: how to run the image.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuntimeConfig {
    /// The command's first words.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the entrypoint (the command, without one).
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` environment entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// Working directory of the command.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// User (and group) to run as: `name`, `uid`, `uid:gid`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// Image labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Ports the image declares (`80/tcp`), values empty objects.
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Signal that stops the command (`SIGTERM` when unset).
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_media_types() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let e = parse_manifest(m, None, "test").err().unwrap();
        assert!(e.to_string().contains("unknown media type"), "{e}");
        let bad_layer = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[{"mediaType":"application/x-foo","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}]}"#;
        let e = parse_manifest(bad_layer, None, "test").err().unwrap();
        assert!(e.to_string().contains("application/x-foo"), "{e}");
    }
}
