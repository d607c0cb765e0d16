//! CRI's ImageService over vpod-images: PullImage fetches the blobs and builds the image's one
//! read-only erofs disk before the name is set (so a pulled image is one a pod can boot, and
//! no unpacked tree stays on the host); an image's id is its manifest digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use vpod_images::{Digest, FsType, RegistryAuth, RegistryConfig, Store};

use crate::error::{CriError, Result};

/// The image service.
#[derive(Debug)]
pub struct Images {
    store: Arc<Store>,
    registry: RegistryConfig,
}

impl Images {
    /// Images of `store`, pulled as `registry` says (mirrors, plain-HTTP hosts).
    pub fn new(store: Arc<Store>, registry: RegistryConfig) -> Images {
        Images { store, registry }
    }

    /// The CRI image of the manifest `digest`, named by `names` (every reference to it).
    fn image(&self, digest: &Digest, names: &[String]) -> Result<cri::Image> {
        let (_, manifest, config) = self.store.image_config(digest)?;
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let (mut tags, mut digests) = (Vec::new(), Vec::new());
        for n in names {
            match n.split_once('@') {
                Some((repo, _)) => digests.push(format!("{repo}@{digest}")),
                None => {
                    tags.push(n.clone());
                    let repo = n.rsplit_once(':').filter(|(_, t)| !t.contains('/'));
                    let repo = repo.map_or(n.as_str(), |(r, _)| r);
                    digests.push(format!("{repo}@{digest}"));
                }
            }
        }
        digests.sort();
        digests.dedup();
        let user = config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let user = user.split(':').next().unwrap_or_default().to_owned();
        let (uid, username) = match user.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) if user.is_empty() => (Some(cri::Int64Value { value: 0 }), String::new()),
            Err(_) => (None, user),
        };
        Ok(cri::Image {
            id: digest.to_string(),
            repo_tags: tags,
            repo_digests: digests,
            size,
            uid,
            username,
            spec: Some(cri::ImageSpec {
                image: digest.to_string(),
                ..Default::default()
            }),
            pinned: false,
        })
    }

    /// Every image: each manifest digest with the names pointing at it.
    fn by_digest(&self) -> Result<BTreeMap<Digest, Vec<String>>> {
        let mut m: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for (name, d) in self.store.refs()? {
            m.entry(d).or_default().push(name);
        }
        Ok(m)
    }

    fn status(&self, image: &str) -> Result<Option<cri::Image>> {
        let digest = match self.store.resolve(image) {
            Ok(d) => d,
            Err(vpod_images::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let names = self.by_digest()?.remove(&digest).unwrap_or_default();
        self.image(&digest, &names).map(Some)
    }

    async fn pull(&self, req: cri::PullImageRequest) -> Result<cri::PullImageResponse> {
        let image = req.image.map(|i| i.image).unwrap_or_default();
        if image.is_empty() {
            return Err(CriError::Invalid(
                "PullImage: no image (image.image)".into(),
            ));
        }
        let auth = auth(req.auth.as_ref())?;
        let t0 = std::time::Instant::now();
        // vpod-images' pull future is not Send (its per-blob closures borrow across awaits):
        // it runs on a blocking thread of its own, driven by the runtime's handle.
        let (store, registry, name) = (self.store.clone(), self.registry.clone(), image.clone());
        let handle = tokio::runtime::Handle::current();
        let (pulled, disk) = tokio::task::spawn_blocking(move || {
            handle.block_on(vpod_images::pull_and_build(
                &store,
                &name,
                &auth,
                &registry,
                &|_| {},
                FsType::detect(),
            ))
        })
        .await
        .map_err(|e| CriError::Invalid(format!("PullImage {image}: {e}")))??;
        tracing::info!(
            "pulled {image} ({}) from {} in {:?}: {} blobs, {} bytes; disk {}",
            pulled.manifest,
            pulled.endpoint,
            t0.elapsed(),
            pulled.fetched_blobs,
            pulled.fetched_bytes,
            disk.path.display()
        );
        Ok(cri::PullImageResponse {
            image_ref: pulled.manifest.to_string(),
        })
    }

    fn remove(&self, req: cri::RemoveImageRequest) -> Result<cri::RemoveImageResponse> {
        let image = req.image.map(|i| i.image).unwrap_or_default();
        match self.store.remove(&image) {
            Ok(_) => Ok(cri::RemoveImageResponse {}),
            // Removing an image that is not there succeeds, as CRI requires.
            Err(vpod_images::Error::NotFound(_)) => Ok(cri::RemoveImageResponse {}),
            Err(e) => Err(e.into()),
        }
    }

    fn fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let u = self.store.usage()?;
        let fs = cri::FilesystemUsage {
            timestamp: crate::state::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.store.dir().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value { value: u.inodes }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        })
    }
}

/// CRI's AuthConfig as a registry login: user and password, or `auth` (base64
/// `user:password`), or a registry token.
fn auth(a: Option<&cri::AuthConfig>) -> Result<RegistryAuth> {
    let Some(a) = a else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !a.username.is_empty() {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| CriError::Invalid(format!("PullImage: auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| CriError::Invalid("PullImage: auth.auth is not UTF-8".into()))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| CriError::Invalid("PullImage: auth.auth is not user:password".into()))?;
        return Ok(RegistryAuth::Basic(u.into(), p.into()));
    }
    if !a.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.registry_token.clone()));
    }
    if !a.identity_token.is_empty() {
        return Err(CriError::Invalid(
            "PullImage: identity tokens (auth.identity_token) are not supported; give a username \
             and password or a registry token"
                .into(),
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

fn answer<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> std::result::Result<Response<cri::ListImagesResponse>, Status> {
        let want = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        answer((|| {
            let only = match &want {
                Some(w) => match self.store.resolve(w) {
                    Ok(d) => Some(d),
                    Err(vpod_images::Error::NotFound(_)) => {
                        return Ok(cri::ListImagesResponse { images: Vec::new() })
                    }
                    Err(e) => return Err(e.into()),
                },
                None => None,
            };
            let mut images = Vec::new();
            for (d, names) in self.by_digest()? {
                if only.as_ref().is_none_or(|o| *o == d) {
                    images.push(self.image(&d, &names)?);
                }
            }
            Ok(cri::ListImagesResponse { images })
        })())
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> std::result::Result<Response<cri::ImageStatusResponse>, Status> {
        let image = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        // An unknown image is no error: an empty answer (kubelet then pulls).
        answer(self.status(&image).map(|image| cri::ImageStatusResponse {
            image,
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> std::result::Result<Response<cri::PullImageResponse>, Status> {
        answer(self.pull(r.into_inner()).await)
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> std::result::Result<Response<cri::RemoveImageResponse>, Status> {
        answer(self.remove(r.into_inner()))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> std::result::Result<Response<cri::ImageFsInfoResponse>, Status> {
        answer(self.fs_info())
    }
}
