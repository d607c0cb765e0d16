//! containerd's FIFOs: a process's stdin read from one, its output copied
//! into the others.
//!
//! Every FIFO is opened read-write: the open never waits for the other end
//! (`ctr run -d` has no reader), and so a reader never sees EOF by itself:
//! stdin ends at CloseIO.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_stream::{Stream, StreamExt};

/// The FIFOs containerd gave a process (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    /// Where the process's stdin comes from.
    pub stdin: String,
    /// Where its stdout goes.
    pub stdout: String,
    /// Where its stderr goes (else stdout).
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

impl Stdio {
    /// Whether the process reads stdin.
    pub fn has_stdin(&self) -> bool {
        !self.stdin.is_empty()
    }
}

/// A piece of a process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes the process wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
}

/// Copies `chunks` into the stdout and stderr FIFOs of `stdio` until the
/// stream ends; the FIFOs close then.
pub async fn copy_output(stdio: &Stdio, chunks: impl Stream<Item = Chunk> + Unpin) {
    let mut stdout = open_fifo_writer(&stdio.stdout);
    let mut stderr = open_fifo_writer(&stdio.stderr);
    copy_into(chunks, &mut stdout, &mut stderr).await;
}

/// The one copier: stderr goes to `stderr`, else (no FIFO for it) to
/// `stdout`; output with nowhere to go is dropped. A failed write drops that
/// chunk only: the process keeps running, a reader may come back.
async fn copy_into<W: AsyncWrite + Unpin>(
    mut chunks: impl Stream<Item = Chunk> + Unpin,
    stdout: &mut Option<W>,
    stderr: &mut Option<W>,
) {
    while let Some(chunk) = chunks.next().await {
        let (target, data) = match chunk {
            Chunk::Stdout(b) => (stdout.as_mut(), b),
            Chunk::Stderr(b) => (stderr.as_mut().or(stdout.as_mut()), b),
        };
        if let Some(f) = target {
            let _ = f.write_all(&data).await;
        }
    }
}

/// containerd's stdout/stderr FIFO as a non-blocking pipe end, so no write
/// ties up a thread.
fn open_fifo_writer(path: &str) -> Option<tokio::net::unix::pipe::Sender> {
    if path.is_empty() {
        return None;
    }
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| log::warn!("open {path}: {e}"))
        .ok()
}

/// containerd's stdin FIFO as a channel of chunks, ended by `closed`
/// (CloseIO) or a read error.
pub fn read_fifo(path: String, closed: Arc<Notify>) -> mpsc::Receiver<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let Ok(mut f) = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .map_err(|e| log::warn!("open {path}: {e}"))
        else {
            return;
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                r = f.read(&mut buf) => match r {
                    Ok(n) if n > 0 => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                },
                _ = closed.notified() => {
                    // Whatever was written before CloseIO still goes in. The
                    // fd is non-blocking: read it until EAGAIN (tokio's
                    // try_read trusts cached readiness and may see nothing).
                    while let Ok(n) = nix::unistd::read(&f, &mut buf) {
                        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn chunks(v: Vec<Chunk>) -> impl Stream<Item = Chunk> + Unpin {
        tokio_stream::iter(v)
    }

    #[tokio::test]
    async fn output_goes_to_its_fifo_and_stderr_falls_back_to_stdout() {
        let out = || {
            chunks(vec![
                Chunk::Stdout(b"out1 ".to_vec()),
                Chunk::Stderr(b"err1 ".to_vec()),
                Chunk::Stdout(b"out2".to_vec()),
                Chunk::Stderr(b"err2".to_vec()),
            ])
        };
        // Both FIFOs: each stream to its own.
        let (mut o, mut e) = (Some(Vec::new()), Some(Vec::new()));
        copy_into(out(), &mut o, &mut e).await;
        assert_eq!(o.unwrap(), b"out1 out2");
        assert_eq!(e.unwrap(), b"err1 err2");
        // No stderr FIFO: stderr joins stdout, in order.
        let (mut o, mut e) = (Some(Vec::new()), None::<Vec<u8>>);
        copy_into(out(), &mut o, &mut e).await;
        assert_eq!(o.unwrap(), b"out1 err1 out2err2");
        // No stdout FIFO: stdout is dropped, stderr still arrives.
        let (mut o, mut e) = (None::<Vec<u8>>, Some(Vec::new()));
        copy_into(out(), &mut o, &mut e).await;
        assert_eq!(e.unwrap(), b"err1 err2");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn output_reaches_containerds_fifo() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let stdio = Stdio {
            stdout: path.to_string_lossy().into_owned(),
            ..Stdio::default()
        };
        // containerd's reader, opened before the copier: no wait either side.
        let mut r = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .unwrap();
        copy_output(
            &stdio,
            chunks(vec![
                Chunk::Stdout(b"hello ".to_vec()),
                Chunk::Stderr(b"world".to_vec()),
            ]),
        )
        .await;
        let mut got = vec![0u8; 11];
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello world");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stdin_ends_at_close_io_with_what_was_written_before() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let closed = Arc::new(Notify::new());
        let mut chunks = read_fifo(path.to_string_lossy().into_owned(), closed.clone());
        // Read-write, like containerd's end: the open never waits.
        let mut w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        w.write_all(b"first ").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), chunks.recv()).await;
        assert_eq!(got.unwrap().unwrap(), b"first ");
        // Written, then CloseIO at once: the bytes still arrive, then the end.
        w.write_all(b"last").unwrap();
        closed.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = tokio::time::timeout(Duration::from_secs(10), chunks.recv())
            .await
            .expect("the stream ends after CloseIO")
        {
            rest.extend(c);
        }
        assert_eq!(rest, b"last");

        // Written and closed before the reader ever ran (`ctr run` with a
        // short stdin): all of it arrives. Repeated: select! picks at random.
        for i in 0..20 {
            let path = dir.join(format!("early-{i}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
            let mut w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            w.write_all(b"early").unwrap();
            let closed = Arc::new(Notify::new());
            closed.notify_one();
            let mut chunks = read_fifo(path.to_string_lossy().into_owned(), closed);
            let mut got = Vec::new();
            while let Some(c) = tokio::time::timeout(Duration::from_secs(10), chunks.recv())
                .await
                .expect("the stream ends after CloseIO")
            {
                got.extend(c);
            }
            assert_eq!(got, b"early", "run {i}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
