//! `vpod serve`: both CRI services on one unix socket (0660, root's), until SIGTERM or SIGINT;
//! then every pod is stopped (its VM, its network) before the server returns.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::ServeConfig;
use crate::image::Images;
use crate::runtime::Runtime;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A dir or the socket could not be made.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The image store could not be opened.
    #[error("image store: {0}")]
    Images(#[from] vpod_images::Error),
    /// The gRPC server failed.
    #[error("CRI server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn private_dir(path: &Path) -> Result<(), ServeError> {
    let io = |op, source| ServeError::Io {
        op,
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(path).map_err(|e| io("create", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod", e))
}

/// Serves `cfg` until `stop` resolves, then stops every pod.
pub async fn serve(
    cfg: ServeConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    for d in [&cfg.state_dir, &cfg.disk_dir] {
        private_dir(d)?;
    }
    private_dir(&cfg.state_dir.join("pods"))?;
    let store = Arc::new(vpod_images::Store::open(&cfg.image_root)?);
    let cfg = Arc::new(cfg);
    let runtime = Arc::new(Runtime::new(cfg.clone(), store.clone()));
    // What a killed server left (pods it can't adopt: their VMMs died with it) goes before
    // the socket answers.
    runtime.clean_leftovers().await;
    let socket = cfg.socket.clone();
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ServeError::Io {
            op: "create",
            path: parent.into(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(&socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            let _ = std::fs::remove_file(&socket);
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|source| ServeError::Io {
        op: "bind",
        path: socket.clone(),
        source,
    })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).map_err(
        |source| ServeError::Io {
            op: "chmod",
            path: socket.clone(),
            source,
        },
    )?;
    let images = Images::new(store, cfg.registry.clone());
    tracing::info!("vpod serve: CRI on {}", socket.display());
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::from_arc(runtime.clone()))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await;
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(result?)
}
