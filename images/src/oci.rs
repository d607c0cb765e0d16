//! The parts of the OCI image spec (and Docker's schema 2, its twin) that vpod reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// What a manifest-shaped document turned out to be.
pub enum Parsed {
    Manifest(Manifest),
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
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// `config` inside the image configuration: how to run the image.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuntimeConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
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
