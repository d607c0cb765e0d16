//! A private `docker-registry` (Debian's distribution 2.8) on a free loopback port, with or
//! without htpasswd basic auth, and a push of an OCI image layout into it: what pull tests
//! (vpod-images', `vpod serve`'s PullImage) pull from. No registry on the internet is reached.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

/// A running registry; dropping it stops it and removes its storage.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts one; with `user`, behind htpasswd basic auth; `extra` is more of its YAML config
    /// (an `auth: token:` section instead).
    pub fn start(user: Option<(&str, &str)>, extra: Option<String>) -> Registry {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vpod-registry-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success());
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: vpod-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        cfg += &extra.unwrap_or_default();
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package) runs");
        let host = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "docker-registry did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, host, dir }
    }

    /// Pushes the image of the OCI layout `layout` (its index's first manifest, as
    /// [`crate::layout`] writes it) as `repo:tag`, logged in as `user` if given.
    pub async fn push_layout(
        &self,
        layout: &Path,
        repo: &str,
        tag: &str,
        user: Option<(&str, &str)>,
    ) {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let auth = match user {
            Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
            None => RegistryAuth::Anonymous,
        };
        let r = Reference::with_tag(self.host.clone(), repo.into(), tag.into());
        client
            .auth(&r, &auth, RegistryOperation::Push)
            .await
            .unwrap();
        let blob = |d: &str| {
            let hex = d.strip_prefix("sha256:").unwrap();
            std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let md = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        let mbytes = blob(&md);
        let manifest: serde_json::Value = serde_json::from_slice(&mbytes).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
        for l in manifest["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_owned());
        }
        for d in digests {
            client.push_blob(&r, blob(&d), &d).await.unwrap();
        }
        let mt = manifest["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        client
            .push_manifest_raw(&r, mbytes, mt.parse().unwrap())
            .await
            .unwrap();
    }
}
