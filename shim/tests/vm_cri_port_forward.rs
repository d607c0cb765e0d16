//! Port-forward through containerd 1.6's CRI (issue 15): a server that listens only on
//! 127.0.0.1 inside a pod is reached through PortForward's URL, spoken to as kubectl's WebSocket
//! client does (`v4.channel.k8s.io`: per port a data and an error channel, each opened with the
//! port in two little-endian bytes); a port nothing listens on gives an error on its error
//! channel. vpod (the pod's localhost is its VM's loopback) beside runc, same answers.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use vpod_test_support::containerd::{RUNC, VPOD};
use vpod_test_support::cri::{self, v1};

const IMAGE: &str = "docker.io/library/vpod-busybox:1";
/// Lines in the big file: about 1.2 MB, many agent chunks and WebSocket frames.
const BIG_LINES: u32 = 200_000;

/// What one port of a port-forward connection carried.
#[derive(Debug, Default)]
struct PortStreams {
    data: Vec<u8>,
    error: Vec<u8>,
}

/// Opens `url` for `ports`, sends `request` on the first port's data channel, and reads every
/// channel until the server closes the connection.
async fn port_forward(url: &str, ports: &[u16], request: &[u8]) -> Vec<PortStreams> {
    let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
    let mut req = format!("{url}?{}", query.join("&"))
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("WebSocket to {url}: {e}"));
    let mut first = vec![0u8];
    first.extend_from_slice(request);
    ws.send(Message::Binary(first.into())).await.unwrap();
    let mut out: Vec<PortStreams> = ports.iter().map(|_| PortStreams::default()).collect();
    let mut headers = vec![0usize; ports.len() * 2];
    let t0 = Instant::now();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(60), ws.next())
        .await
        .unwrap_or_else(|_| panic!("port-forward {url}: silent for 60 s"))
    {
        let bytes = match m {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(_)) => break,
            Err(e) => {
                eprintln!("port-forward {url}: the WebSocket failed: {e}");
                break;
            }
            Ok(_) => continue,
        };
        let (ch, payload) = bytes.split_first().expect("a channel byte");
        let ch = *ch as usize;
        assert!(ch < ports.len() * 2, "channel {ch}");
        // The first two bytes of each channel are its port.
        let skip = (2 - headers[ch]).min(payload.len());
        let port = ports[ch / 2].to_le_bytes();
        assert_eq!(
            &payload[..skip],
            &port[headers[ch]..headers[ch] + skip],
            "channel {ch}'s port header"
        );
        headers[ch] += skip;
        let s = &mut out[ch / 2];
        if ch.is_multiple_of(2) {
            s.data.extend_from_slice(&payload[skip..]);
        } else {
            s.error.extend_from_slice(&payload[skip..]);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "port-forward {url}"
        );
    }
    out
}

/// The body of an HTTP/1.0 response, or what came back if it isn't one.
fn body(resp: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(resp);
    if !text.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP response: {:?}",
            &text[..text.len().min(200)]
        ));
    }
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    Ok(resp[at + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_on_the_pods_localhost_is_reached_through_port_forward() {
    port_forwards(false).await;
}

/// Two ports on one connection, one refused beside one streaming the big file, then single-port
/// copies: every copy whole. (It used to fail one run in four: the VMM's device thread freed
/// enough to trim its own malloc arena, glibc's first trim made an `openat` that thread's seccomp
/// list forbids, and the kernel killed the VMM; `vpod_jail::seccomp::one_arena` is the fix.)
#[tokio::test(flavor = "multi_thread")]
async fn two_ports_at_once_one_refused_one_streaming() {
    port_forwards(true).await;
}

async fn port_forwards(two_ports_at_once: bool) {
    let (c, mut client) = cri::start_containerd(
        "cri-portfwd",
        Path::new(env!("CARGO_BIN_EXE_containerd-shim-vpod-v2")),
        IMAGE,
        Vec::new(),
        serde_json::json!({"Cmd": ["sh"]}),
    )
    .await;
    let big: String = (1..=BIG_LINES).map(|i| format!("{i}\n")).collect();
    let script = format!(
        "mkdir -p /www && echo hello-from-the-pod > /www/hello && seq 1 {BIG_LINES} > /www/big \
         && echo serving && exec httpd -f -p 127.0.0.1:8080 -h /www"
    );
    let mut results = HashMap::new();
    for handler in [VPOD, RUNC] {
        let logs = c.dir.join("pod-logs");
        let config = cri::pod_config("fwd", &format!("fwd-{handler}"), &logs);
        let pod = client
            .run_pod(&config, handler)
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox ({handler}): {s}\n{}", c.log()));
        std::fs::create_dir_all(Path::new(&config.log_directory).join("web")).unwrap();
        let cc = cri::container_config("web", IMAGE, &["sh", "-c", &script]);
        client
            .create_and_start(&pod, &config, &cc)
            .await
            .unwrap_or_else(|s| panic!("create+start ({handler}): {s}\n{}", c.log()));
        let log = Path::new(&config.log_directory).join("web/0.log");
        cri::wait_log(&log, |l| l.iter().any(|(_, t)| t == "serving"), handler).await;

        let url = |ports: Vec<i32>| {
            let mut rt = client.runtime.clone();
            let pod = pod.clone();
            async move {
                rt.port_forward(v1::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: ports,
                })
                .await
                .unwrap_or_else(|s| panic!("PortForward: {s}"))
                .into_inner()
                .url
            }
        };
        // httpd binds right after "serving": retry the first request until it answers.
        let t0 = Instant::now();
        let hello = loop {
            let r = port_forward(
                &url(vec![8080]).await,
                &[8080],
                b"GET /hello HTTP/1.0\r\n\r\n",
            )
            .await;
            match body(&r[0].data) {
                Ok(b) => break b,
                Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                    eprintln!(
                        "{handler}: not yet: {e}; error stream {:?}",
                        String::from_utf8_lossy(&r[0].error)
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{handler}: {e}\n{}", c.log()),
            }
        };
        // Nothing listening on 9999 (alone, or beside the big file's port on one connection).
        let mut copies = Vec::new();
        let closed_err = if two_ports_at_once {
            let r = port_forward(
                &url(vec![8080, 9999]).await,
                &[8080, 9999],
                b"GET /big HTTP/1.0\r\n\r\n",
            )
            .await;
            copies.push(("beside 9999", body(&r[0].data)));
            r[1].error.clone()
        } else {
            let r = port_forward(&url(vec![9999]).await, &[9999], b"x").await;
            r[0].error.clone()
        };
        // The big file, one port at a time: every copy whole.
        for _ in 0..3 {
            let r = port_forward(
                &url(vec![8080]).await,
                &[8080],
                b"GET /big HTTP/1.0\r\n\r\n",
            )
            .await;
            copies.push(("alone", body(&r[0].data)));
        }
        let bad: Vec<String> = copies
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| c.as_deref() != Ok(big.as_bytes()))
            .map(|(i, (what, c))| match c {
                Ok(b) => format!("copy {i} ({what}): {} of {} bytes", b.len(), big.len()),
                Err(e) => format!("copy {i} ({what}): {e}"),
            })
            .collect();
        if !bad.is_empty() {
            let log = c.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("port-forward") || l.contains("vpod-vmm"))
                .collect();
            eprintln!(
                "{handler}: {}; port-forward log lines:\n{}",
                bad.join("; "),
                lines.join("\n")
            );
        }
        let closed_err = String::from_utf8_lossy(&closed_err).into_owned();
        eprintln!("{handler}: port 9999's error stream: {closed_err}");
        results.insert(handler, (hello, bad, !closed_err.is_empty()));
        client.stop_and_remove_pod(&pod).await.expect("stop pod");
    }
    for handler in [VPOD, RUNC] {
        let (hello, bad, closed_errs) = &results[handler];
        assert_eq!(
            String::from_utf8_lossy(hello),
            "hello-from-the-pod\n",
            "{handler}"
        );
        assert!(
            bad.is_empty(),
            "{handler}: the big file came back changed: {bad:?}"
        );
        assert!(
            *closed_errs,
            "{handler}: a port nothing listens on gave no error"
        );
    }
}
