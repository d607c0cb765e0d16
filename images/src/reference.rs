//! Image references, normalised the way Docker and containerd spell them
//! (`busybox` -> `docker.io/library/busybox:latest`).

use oci_client::Reference;

use crate::error::{Error, Result};

/// Parses a reference (tag and/or digest; no tag and no digest means `latest`).
pub fn parse(s: &str) -> Result<Reference> {
    s.parse::<Reference>().map_err(|e| Error::BadReference {
        reference: s.to_owned(),
        reason: e.to_string(),
    })
}

/// The canonical name under which a reference is stored.
pub fn normalize(s: &str) -> Result<String> {
    Ok(parse(s)?.whole())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/a/b:v1").unwrap(),
            "127.0.0.1:5000/a/b:v1"
        );
        assert!(normalize("has spaces/x").is_err());
        assert!(normalize("a//b").is_err());
        assert!(normalize("").is_err());
    }
}
