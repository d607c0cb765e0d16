//! Our side of a container's stdio: our stdin into the container's (or an exec's) stdin, and
//! its output into the pod's log and, in the foreground, our stdout and stderr.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use vpod_sandbox::Stdin;

use crate::logfile::CappedLog;

/// Bytes read from our stdin at a time.
const STDIN_CHUNK: usize = 8192;

/// Copies our stdin into `stdin` from a thread of its own (reading a terminal or a pipe
/// blocks); its end (or a read error) closes the container's stdin.
pub fn forward_stdin(mut stdin: Stdin) {
    std::thread::spawn(move || {
        let mut buf = [0u8; STDIN_CHUNK];
        let mut ours = std::io::stdin().lock();
        loop {
            match std::io::Read::read(&mut ours, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin.blocking_close();
                    return;
                }
                Ok(n) => {
                    if stdin.blocking_write(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// One of our output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ours {
    /// Our stdout.
    Stdout,
    /// Our stderr.
    Stderr,
}

/// Where one stream of a container's output goes: the pod's log (shared by both streams, so it
/// keeps their order) and, in the foreground, our stdout or stderr. Writes are synchronous, a
/// chunk at a time, as small as the agent sends them; their errors are ignored (a full disk or
/// a closed terminal must not stop the container's output from draining).
#[derive(Debug, Clone)]
pub struct Sink {
    log: Option<Arc<Mutex<CappedLog>>>,
    ours: Option<Ours>,
}

impl Sink {
    /// A sink into `log` (if any) and `ours` (if any).
    pub fn new(log: Option<Arc<Mutex<CappedLog>>>, ours: Option<Ours>) -> Sink {
        Sink { log, ours }
    }

    fn write_now(&self, data: &[u8]) {
        if let Some(log) = &self.log {
            let _ = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(data);
        }
        match self.ours {
            Some(Ours::Stdout) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
            Some(Ours::Stderr) => {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(data);
                let _ = e.flush();
            }
            None => {}
        }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_now(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Both streams land in the one log, in the order they came.
    #[tokio::test]
    async fn both_streams_share_the_log_in_order() {
        let dir = std::env::temp_dir().join(format!("vpod-stdio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("container.log");
        let log = Arc::new(Mutex::new(CappedLog::open(&path, 1 << 20).unwrap()));
        let mut out = Sink::new(Some(log.clone()), None);
        let mut err = Sink::new(Some(log.clone()), None);
        out.write_all(b"one ").await.unwrap();
        err.write_all(b"two ").await.unwrap();
        out.write_all(b"three").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one two three");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
