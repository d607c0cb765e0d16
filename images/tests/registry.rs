//! Pulls from Debian's `docker-registry` (distribution 2.8) started by the test on 127.0.0.1, with
//! and without htpasswd auth, by tag and by digest, through a multi-arch index and through a
//! mirror; a registry answering 500 is a clear error that leaves nothing behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference, RegistryOperation};
use vpod_images::oci::{self, Descriptor, Manifest};
use vpod_images::{pull, Digest, Error, FsType, RegistryAuth, RegistryConfig, Store};

use vpod_test_support::registry::Registry;

/// Starts docker-registry on a free loopback port; with `user`, behind htpasswd basic auth.
fn start_registry(user: Option<(&str, &str)>) -> Registry {
    Registry::start(user, None)
}

/// As [`start_registry`]; `token_auth` is an `auth: token:` section to use instead.
fn start_registry_with(user: Option<(&str, &str)>, token_auth: Option<String>) -> Registry {
    Registry::start(user, token_auth)
}

fn plain_client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// Pushes the busybox test image as `repo:tag` and, beside it, an index (tag `multi`) with an
/// arm64 decoy first. Returns the amd64 manifest digest and the index digest.
async fn push_test_image(
    host: &str,
    repo: &str,
    tag: &str,
    auth: &RegistryAuth,
) -> (Digest, Digest) {
    let client = plain_client();
    let r = Reference::with_tag(host.into(), repo.into(), tag.into());
    client
        .auth(&r, auth, RegistryOperation::Push)
        .await
        .unwrap();
    let layers = busybox_layers();
    let config = config_json(&layers, &["/bin/sh"]);
    let mut descs = Vec::new();
    for l in &layers {
        let (data, mt) = compress(l, Compression::Gzip);
        let d = Digest::of(&data);
        client
            .push_blob(&r, data.clone(), d.as_str())
            .await
            .unwrap();
        descs.push(Descriptor {
            media_type: mt.into(),
            digest: d,
            size: data.len() as u64,
            platform: None,
            annotations: Default::default(),
        });
    }
    let cd = Digest::of(&config);
    client
        .push_blob(&r, config.clone(), cd.as_str())
        .await
        .unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: oci::OCI_CONFIG.into(),
            digest: cd,
            size: config.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        layers: descs,
    };
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = Digest::of(&mbytes);
    client
        .push_manifest_raw(
            &r,
            mbytes.clone(),
            http::HeaderValue::from_static(oci::OCI_MANIFEST),
        )
        .await
        .unwrap();
    let platform = |arch: &str| oci::Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: None,
    };
    let entry = |p: oci::Platform| Descriptor {
        media_type: oci::OCI_MANIFEST.into(),
        digest: md.clone(),
        size: mbytes.len() as u64,
        platform: Some(p),
        annotations: Default::default(),
    };
    // The decoy points at the same manifest bytes; only the platform tells them apart, so the
    // test checks the picker by the arm64 entry coming first.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_INDEX,
        "manifests": [entry(platform("arm64")), entry(platform("amd64"))]
    });
    let ibytes = serde_json::to_vec(&index).unwrap();
    let multi = Reference::with_tag(host.into(), repo.into(), "multi".into());
    client
        .push_manifest_raw(
            &multi,
            ibytes.clone(),
            http::HeaderValue::from_static(oci::OCI_INDEX),
        )
        .await
        .unwrap();
    (md, Digest::of(&ibytes))
}

fn no_progress(_: vpod_images::Progress) {}

fn assert_store_clean(store: &Store) {
    assert_eq!(list(&store.dir().join("ingest")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_digest_without_auth_and_fetches_nothing_twice() {
    let reg = start_registry(None);
    let (md, index_digest) =
        push_test_image(&reg.host, "vpod/busybox", "v1", &RegistryAuth::Anonymous).await;
    let t = TempDir::new("pull");
    let store = Store::open(&t.path("root")).unwrap();
    let cfg = RegistryConfig::default();

    let by_tag = format!("{}/vpod/busybox:v1", reg.host);
    let p = pull(
        &store,
        &by_tag,
        &RegistryAuth::Anonymous,
        &cfg,
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(p.manifest, md);
    assert_eq!((p.fetched_blobs, p.reused_blobs), (3, 0));
    assert_eq!(store.resolve(&by_tag).unwrap(), md);

    // Same blobs again under a digest reference: nothing is fetched.
    let by_digest = format!("{}/vpod/busybox@{md}", reg.host);
    let p = pull(
        &store,
        &by_digest,
        &RegistryAuth::Anonymous,
        &cfg,
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(p.manifest, md);
    assert_eq!((p.fetched_blobs, p.reused_blobs), (0, 3));

    // The index resolves to linux/amd64.
    let multi = format!("{}/vpod/busybox:multi", reg.host);
    let p = pull(&store, &multi, &RegistryAuth::Anonymous, &cfg, &no_progress)
        .await
        .unwrap();
    assert_eq!(p.manifest, md);
    assert!(store.has_blob(&index_digest));

    // A digest that the registry's content doesn't match is refused.
    let wrong = format!("{}/vpod/busybox@{}", reg.host, Digest::of(b"nope"));
    let e = pull(&store, &wrong, &RegistryAuth::Anonymous, &cfg, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");

    let img = store.block_image(&by_tag).unwrap();
    assert!(img.built);
    assert_eq!(img.info.manifest, md);
    assert_store_clean(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_basic_auth_and_refuses_bad_credentials() {
    let reg = start_registry(Some(("vpod", "s3cret")));
    let auth = RegistryAuth::Basic("vpod".into(), "s3cret".into());
    let (md, _) = push_test_image(&reg.host, "private/busybox", "v2", &auth).await;
    let t = TempDir::new("pull-auth");
    let store = Store::open(&t.path("root")).unwrap();
    let cfg = RegistryConfig::default();
    let r = format!("{}/private/busybox:v2", reg.host);

    let e = pull(&store, &r, &RegistryAuth::Anonymous, &cfg, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    let bad = RegistryAuth::Basic("vpod".into(), "wrong".into());
    let e = pull(&store, &r, &bad, &cfg, &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(store.refs().unwrap().is_empty());

    let p = pull(&store, &r, &auth, &cfg, &no_progress).await.unwrap();
    assert_eq!(p.manifest, md);
    let p = pull(
        &store,
        &format!("{}/private/busybox@{md}", reg.host),
        &auth,
        &cfg,
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(p.fetched_blobs, 0);
    store.ensure_block_image(&md, FsType::Erofs).unwrap();
    assert_store_clean(&store);
}

/// An HTTP server that answers 500 to everything (bounded: it stops after `max` requests).
fn broken_registry(max: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "internal error";
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_answering_500_is_a_clear_error_and_a_mirror_is_tried_first() {
    let broken = broken_registry(50);
    let t = TempDir::new("pull-500");
    let store = Store::open(&t.path("root")).unwrap();
    let e = pull(
        &store,
        &format!("{broken}/vpod/busybox:v1"),
        &RegistryAuth::Anonymous,
        &RegistryConfig::default(),
        &no_progress,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(e.to_string().contains(&broken), "{e}");
    assert!(store.refs().unwrap().is_empty());
    assert_store_clean(&store);

    // Mirrors: a broken one, then a good one, for a registry that doesn't exist at all.
    let reg = start_registry(None);
    let (md, _) = push_test_image(
        &reg.host,
        "library/busybox",
        "mirrored",
        &RegistryAuth::Anonymous,
    )
    .await;
    let cfg: RegistryConfig = toml::from_str(&format!(
        "[mirrors]\n\"registry.invalid\" = [\"{broken}\", \"{}\"]\n",
        reg.host
    ))
    .unwrap();
    let p = pull(
        &store,
        "registry.invalid/library/busybox:mirrored",
        &RegistryAuth::Anonymous,
        &cfg,
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(p.manifest, md);
    assert_eq!(p.endpoint, reg.host);
    assert_eq!(
        store
            .resolve("registry.invalid/library/busybox:mirrored")
            .unwrap(),
        md
    );
}

/// RFC 4648 base64, url-safe without padding (JWT) or standard with padding (x5c, Basic).
fn base64(data: &[u8], url: bool) -> String {
    let abc: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            for _ in c.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A token server (the `realm` of distribution's token auth): GET /token with the right Basic
/// credentials gets an RS256 JWT, signed with the `openssl` CLI by a key whose self-signed
/// certificate the registry trusts (`rootcertbundle`) and which the JWT carries in `x5c`,
/// granting the requested scope. Anything else is 401.
struct TokenServer {
    realm: String,
    dir: TempDir,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const SERVICE: &str = "vpod-test-registry";
const ISSUER: &str = "vpod-test-token-issuer";

fn start_token_server(user: &str, password: &str) -> TokenServer {
    let dir = TempDir::new("token");
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=vpod-test-token-issuer", "-keyout"])
        .arg(dir.path("key.pem"))
        .arg("-out")
        .arg(dir.path("cert.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(dir.path("cert.pem"))
        .output()
        .unwrap();
    assert!(der.status.success());
    let x5c = base64(&der.stdout, false);
    let key = dir.path("key.pem");
    let work = dir.0.clone();
    let expected = format!(
        "Basic {}",
        base64(format!("{user}:{password}").as_bytes(), false)
    );
    let user = user.to_owned();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", l.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for (seq, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            let target = req.split_whitespace().nth(1).unwrap_or("").to_owned();
            let authorized = req.lines().any(|h| {
                h.split_once(':').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                })
            });
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let (status, body) = if path != "/token" {
                ("404 Not Found", "{}".to_owned())
            } else if !authorized {
                (
                    "401 Unauthorized",
                    r#"{"details":"bad credentials"}"#.to_owned(),
                )
            } else {
                let access: Vec<serde_json::Value> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| *k == "scope")
                    .filter_map(|(_, v)| {
                        let v = url_decode(v);
                        let mut p = v.splitn(3, ':');
                        let (t, name, actions) = (p.next()?, p.next()?, p.next()?);
                        Some(serde_json::json!({
                            "type": t, "name": name,
                            "actions": actions.split(',').collect::<Vec<_>>()
                        }))
                    })
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": ISSUER, "sub": user, "aud": SERVICE,
                    "exp": now + 300, "nbf": now - 10, "iat": now,
                    "jti": format!("vpod-{seq}"), "access": access
                });
                let signing_input = format!(
                    "{}.{}",
                    base64(header.to_string().as_bytes(), true),
                    base64(claims.to_string().as_bytes(), true)
                );
                let input = work.join(format!("in-{seq}"));
                std::fs::write(&input, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(&key)
                    .arg(&input)
                    .output()
                    .unwrap();
                assert!(sig.status.success());
                let jwt = format!("{signing_input}.{}", base64(&sig.stdout, true));
                (
                    "200 OK",
                    serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                        .to_string(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    TokenServer {
        realm,
        dir,
        requests,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_bearer_tokens_from_a_token_server_and_refuses_bad_credentials() {
    let ts = start_token_server("vpod", "t0ken-pass");
    let reg = start_registry_with(
        None,
        Some(format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {}\n",
            ts.realm,
            ts.dir.path("cert.pem").display()
        )),
    );
    // The registry itself demands a bearer token, pointing at the token server.
    let mut s = std::net::TcpStream::connect(&reg.host).unwrap();
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        reg.host
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        resp.contains(&format!("Bearer realm=\"{}\"", ts.realm)),
        "{resp}"
    );

    let auth = RegistryAuth::Basic("vpod".into(), "t0ken-pass".into());
    let (md, _) = push_test_image(&reg.host, "private/busybox", "v3", &auth).await;
    let t = TempDir::new("pull-bearer");
    let store = Store::open(&t.path("root")).unwrap();
    let cfg = RegistryConfig::default();
    let r = format!("{}/private/busybox:v3", reg.host);

    for bad in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic("vpod".into(), "wrong".into()),
        RegistryAuth::Bearer("not-a-token".into()),
    ] {
        let e = pull(&store, &r, &bad, &cfg, &no_progress)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "{e}");
        let text = format!("{e}: {:?}", std::error::Error::source(&e));
        assert!(
            text.contains("401") || text.to_lowercase().contains("auth"),
            "not an auth error: {text}"
        );
        assert!(store.refs().unwrap().is_empty());
        assert_eq!(
            list(&store.dir().join("blobs/sha256")),
            Vec::<String>::new()
        );
        assert_store_clean(&store);
    }

    let before = ts.requests.load(std::sync::atomic::Ordering::SeqCst);
    let p = pull(&store, &r, &auth, &cfg, &no_progress).await.unwrap();
    assert_eq!(p.manifest, md);
    assert_eq!((p.fetched_blobs, p.reused_blobs), (3, 0));
    assert!(
        ts.requests.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the pull fetched a token"
    );
    assert_eq!(store.resolve(&r).unwrap(), md);
    let img = store.ensure_block_image(&md, FsType::Erofs).unwrap();
    assert!(img.built);
    assert_store_clean(&store);

    // A token obtained beforehand (`vpod image pull --token`) is sent as is.
    let token = fetch_token(&ts, "vpod", "t0ken-pass", "repository:private/busybox:pull");
    let t2 = TempDir::new("pull-bearer-token");
    let store = Store::open(&t2.path("root")).unwrap();
    let p = pull(&store, &r, &RegistryAuth::Bearer(token), &cfg, &no_progress)
        .await
        .unwrap();
    assert_eq!(p.manifest, md);
    assert_store_clean(&store);
}

/// GET the token server's realm as a client would, returning the token.
fn fetch_token(ts: &TokenServer, user: &str, password: &str, scope: &str) -> String {
    let (host, path) = ts
        .realm
        .trim_start_matches("http://")
        .split_once('/')
        .unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path}?service={SERVICE}&scope={} HTTP/1.1\r\nHost: {host}\r\n\
         Authorization: Basic {}\r\nConnection: close\r\n\r\n",
        scope.replace(':', "%3A").replace('/', "%2F"),
        base64(format!("{user}:{password}").as_bytes(), false)
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_whose_build_fails_names_nothing() {
    let reg = start_registry(None);
    let (md, _) = push_test_image(&reg.host, "vpod/limited", "v1", &RegistryAuth::Anonymous).await;
    let t = TempDir::new("pull-build");
    let cfg = RegistryConfig::default();
    let image = format!("{}/vpod/limited:v1", reg.host);
    // busybox alone is bigger than this: the build fails on an unpack limit.
    let small =
        Store::open(&t.path("root"))
            .unwrap()
            .with_unpack_limits(vpod_images::UnpackLimits {
                max_bytes: 4096,
                ..Default::default()
            });
    let e = vpod_images::pull_and_build(
        &small,
        &image,
        &RegistryAuth::Anonymous,
        &cfg,
        &no_progress,
        FsType::Erofs,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
    assert!(
        small.refs().unwrap().is_empty(),
        "a failed pull left a name"
    );
    assert!(small.cached_block_image(&md).unwrap().is_none());

    // With room it is pulled (nothing fetched twice), built, and named.
    let store = Store::open(&t.path("root")).unwrap();
    let (p, img) = vpod_images::pull_and_build(
        &store,
        &image,
        &RegistryAuth::Anonymous,
        &cfg,
        &no_progress,
        FsType::Erofs,
    )
    .await
    .unwrap();
    assert_eq!((p.manifest.clone(), p.fetched_blobs), (md.clone(), 0));
    assert!(img.built);
    assert_eq!(store.resolve(&image).unwrap(), md);
    assert_store_clean(&store);
}
