//! containerd's FIFOs: a process's stdin read from one into the pod
//! ([`copy_stdin`]), its output copied into the others ([`output_fifos`],
//! for the pod's one output copier, `vpod_sandbox::Output::copy_to`).
//!
//! Every FIFO is opened read-write: the open never waits for the other end
//! (`ctr run -d` has no reader), and so a reader never sees EOF by itself:
//! stdin ends at CloseIO. That is containerd's side of the FIFOs, and the
//! shim's alone; where the bytes go in the pod (the stdin rule, which stream
//! goes to which writer) is the sandbox's.

use std::sync::Arc;

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Notify};
use vpod_sandbox::{PodError, Stdin};

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

/// The writer end of one of containerd's output FIFOs.
pub type FifoWriter = pipe::Sender;

/// The stdout and stderr FIFOs of `stdio`, opened for the output copier:
/// `None` where containerd gave none (stderr then goes to stdout's; output
/// with nowhere to go is dropped) or the open failed. They close when the
/// copier drops them, at the output's end.
pub fn output_fifos(stdio: &Stdio) -> (Option<FifoWriter>, Option<FifoWriter>) {
    (
        open_fifo_writer(&stdio.stdout),
        open_fifo_writer(&stdio.stderr),
    )
}

/// containerd's stdout/stderr FIFO as a non-blocking pipe end, so no write
/// ties up a thread.
fn open_fifo_writer(path: &str) -> Option<FifoWriter> {
    if path.is_empty() {
        return None;
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| log::warn!("open {path}: {e}"))
        .ok()
}

/// Copies containerd's stdin FIFO `path` into `stdin` (a container's or an
/// exec's) until CloseIO (`closed`), then closes it: the process reads EOF.
pub fn copy_stdin(path: String, closed: Arc<Notify>, mut stdin: Stdin) {
    let mut chunks = read_fifo(path, closed);
    tokio::spawn(async move {
        while let Some(b) = chunks.recv().await {
            if let Err(e) = stdin.write(b).await {
                return stdin_failed(&e);
            }
        }
        if let Err(e) = stdin.close().await {
            stdin_failed(&e);
        }
    });
}

/// A refusal of the agent is worth a warning; a stream that ended with its
/// process (no answer of the agent's) is not.
fn stdin_failed(e: &PodError) {
    if e.code().is_some() {
        log::warn!("{e}");
    } else {
        log::debug!("{e}");
    }
}

/// containerd's stdin FIFO as a channel of chunks, ended by `closed`
/// (CloseIO) or a read error.
fn read_fifo(path: String, closed: Arc<Notify>) -> mpsc::Receiver<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let Ok(mut f) = pipe::OpenOptions::new()
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

    fn fifo(dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// The copier gets a writer for each FIFO containerd gave: none for
    /// stderr sends stderr to stdout's (the copier's rule, tested with it in
    /// vpod-sandbox); none at all drops the output.
    #[tokio::test]
    async fn each_fifo_containerd_gave_gets_a_writer() {
        let dir = std::env::temp_dir().join(format!("vpod-shim-fifos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let both = Stdio {
            stdout: fifo(&dir, "out"),
            stderr: fifo(&dir, "err"),
            ..Stdio::default()
        };
        let (o, e) = output_fifos(&both);
        assert!(o.is_some() && e.is_some());
        let stdout_only = Stdio {
            stderr: String::new(),
            ..both.clone()
        };
        let (o, e) = output_fifos(&stdout_only);
        assert!(o.is_some() && e.is_none());
        let (o, e) = output_fifos(&Stdio::default());
        assert!(o.is_none() && e.is_none());
        // A FIFO that cannot be opened is no writer (logged), not a failure.
        let gone = Stdio {
            stdout: dir.join("missing").to_string_lossy().into_owned(),
            ..Stdio::default()
        };
        assert!(output_fifos(&gone).0.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn output_reaches_containerds_fifo() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("vpod-shim-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stdio = Stdio {
            stdout: fifo(&dir, "stdout"),
            ..Stdio::default()
        };
        // containerd's reader, opened before the copier: no wait either side.
        let mut r = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&stdio.stdout)
            .unwrap();
        let (o, e) = output_fifos(&stdio);
        assert!(e.is_none(), "no stderr FIFO: stderr goes to stdout's");
        let mut o = o.expect("the stdout FIFO opens");
        o.write_all(b"hello world").await.unwrap();
        drop(o);
        let mut got = vec![0u8; 11];
        tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello world");

        // No reader at all (`ctr run -d`): the open does not wait for one.
        let detached = Stdio {
            stdout: fifo(&dir, "detached"),
            ..Stdio::default()
        };
        assert!(output_fifos(&detached).0.is_some());
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
