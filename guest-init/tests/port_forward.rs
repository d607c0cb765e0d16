//! The agent's PortForward without a VM (the real server behind the fake VMM of `harness`): a
//! connection to 127.0.0.1:PORT carries bytes both ways and its half-closes, a port nothing
//! listens on fails the call, and a caller that goes closes the connection.

mod harness;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;
use vpod_agent_api::pb::{port_forward_input::Input, PortForwardInput, PortForwardOutput};

use harness::Harness;

fn msg(i: Input) -> PortForwardInput {
    PortForwardInput { input: Some(i) }
}

type Call = (
    mpsc::Sender<PortForwardInput>,
    Result<tonic::Streaming<PortForwardOutput>, tonic::Status>,
);

async fn call(h: &Harness, first: Input) -> Call {
    let mut c = h.client().await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(msg(first)).await.unwrap();
    let out = c
        .port_forward(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, out)
}

async fn read_all(out: &mut tonic::Streaming<PortForwardOutput>) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .expect("output within 10 s")
    {
        got.extend(m.expect("no error").data);
    }
    got
}

#[tokio::test]
async fn bytes_go_both_ways_and_half_closes_pass_through() {
    let h = Harness::start(None).await;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    // Reads to EOF (the caller's close_write), then answers with the bytes reversed and closes.
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got.reverse();
        s.write_all(&got).await.unwrap();
        got.len()
    });
    let (tx, out) = call(&h, Input::Port(port.into())).await;
    let mut out = out.expect("connected");
    // More than one output chunk and more than the input buffer's depth.
    let sent: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for chunk in sent.chunks(60_000) {
        tx.send(msg(Input::Data(chunk.to_vec()))).await.unwrap();
    }
    tx.send(msg(Input::CloseWrite(true))).await.unwrap();
    let got = read_all(&mut out).await;
    assert_eq!(srv.await.unwrap(), sent.len());
    let mut want = sent;
    want.reverse();
    assert!(got == want, "{} bytes back, {} sent", got.len(), want.len());
}

#[tokio::test]
async fn refused_ports_and_bad_first_messages_fail_the_call() {
    let h = Harness::start(None).await;
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_tx, out) = call(&h, Input::Port(free.into())).await;
    let s = out.expect_err("refused");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains(&format!("127.0.0.1:{free}")),
        "{}",
        s.message()
    );
    for (first, needle) in [
        (Input::Port(0), "not in 1..=65535"),
        (Input::Port(70_000), "not in 1..=65535"),
        (Input::Data(b"x".to_vec()), "must carry the port"),
    ] {
        let (_tx, out) = call(&h, first).await;
        let s = out.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(needle), "{}", s.message());
    }
}

#[tokio::test]
async fn a_caller_that_goes_closes_the_connection() {
    let h = Harness::start(None).await;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let (tx, out) = call(&h, Input::Port(port.into())).await;
    let mut out = out.expect("connected");
    let (mut s, _) = server.accept().await.unwrap();
    // The connection works...
    s.write_all(b"hi").await.unwrap();
    let first = out.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"hi");
    // ...until the caller drops both streams without a close: the server then reads EOF.
    drop(tx);
    drop(out);
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("EOF within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server still has a connection");
}
