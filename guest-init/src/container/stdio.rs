//! A container's (or exec'd process's) stdio: pipes, or a pty for TTYs. The
//! agent's ends are non-blocking and polled by tokio.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// The agent's end of one stream.
pub type AsyncEnd = Arc<AsyncFd<OwnedFd>>;

/// The child's three fds and the agent's ends.
#[derive(Debug)]
pub struct Stdio {
    /// The child's stdin, stdout, stderr.
    pub child: [OwnedFd; 3],
    /// The agent's ends.
    pub ends: Ends,
}

/// The agent's ends of a process's stdio.
#[derive(Debug)]
pub struct Ends {
    /// stdout (the pty master with a TTY).
    pub out: AsyncEnd,
    /// stderr; None with a TTY (it is the same stream).
    pub err: Option<AsyncEnd>,
    /// stdin writer (the pty master with a TTY); None when stdin is closed.
    pub input: Option<AsyncEnd>,
    /// The pty master, for resizes.
    pub pty: Option<AsyncEnd>,
}

/// Makes `fd` non-blocking and close-on-exec and registers it with tokio.
pub fn prep(fd: OwnedFd) -> io::Result<AsyncEnd> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the AsyncFd owns the fd, so it stays open (and is not reused
    // for another file) for as long as it is registered.
    let async_fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
    Ok(Arc::new(async_fd))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

impl Stdio {
    /// `pts`: the devpts instance the container sees as /dev/pts, so the
    /// process finds its own tty there (`tty`, ttyname); None for the
    /// agent's own instance (tests).
    pub fn new(
        tty: bool,
        stdin: bool,
        rows: u16,
        cols: u16,
        pts: Option<&std::path::Path>,
    ) -> io::Result<Self> {
        if tty {
            let (master, slave) = open_pty(pts)?;
            let ws = libc::winsize {
                ws_row: if rows == 0 { 24 } else { rows },
                ws_col: if cols == 0 { 80 } else { cols },
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            let master = prep(master)?;
            let s1 = slave.try_clone()?;
            let s2 = slave.try_clone()?;
            return Ok(Stdio {
                child: [slave, s1, s2],
                ends: Ends {
                    out: master.clone(),
                    err: None,
                    input: Some(master.clone()),
                    pty: Some(master),
                },
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_child, input) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(prep(w)?))
        } else {
            let null = std::fs::File::open("/dev/null")?;
            (OwnedFd::from(null), None)
        };
        Ok(Stdio {
            child: [in_child, out_w, err_w],
            ends: Ends {
                out: prep(out_r)?,
                err: Some(prep(err_r)?),
                input,
                pty: None,
            },
        })
    }
}

/// A pty pair from the devpts instance at `pts` (its `ptmx`), or the
/// system's /dev/ptmx. The slave is opened through the master
/// (TIOCGPTPEER), so no path lookup can be raced.
fn open_pty(pts: Option<&std::path::Path>) -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let ptmx = match pts {
        Some(dir) => dir.join("ptmx"),
        None => std::path::PathBuf::from("/dev/ptmx"),
    };
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh fd that nothing else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Reads into `buf`; Ok(0) at EOF (a pty master's EIO, once every slave is
/// closed, is its EOF).
pub async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_fd(), buf).map_err(io::Error::from)
        }) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data`.
pub async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Sets a pty's window size.
pub fn resize(pty: &AsyncFd<OwnedFd>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(pty.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies `fd` to `tx` as `wrap(bytes)` until EOF or until nobody listens.
pub async fn pump<T>(fd: AsyncEnd, tx: mpsc::Sender<T>, wrap: impl Fn(Vec<u8>) -> T) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match read(&fd, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipes_carry_bytes_and_end() {
        let s = Stdio::new(false, true, 0, 0, None).unwrap();
        let [child_in, child_out, _child_err] = s.child;
        write_all(s.ends.input.as_ref().unwrap(), b"ping")
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(child_in.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        nix::unistd::write(&child_out, b"pong").unwrap();
        drop(child_out);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(pump(s.ends.out.clone(), tx, |b| b));
        assert_eq!(rx.recv().await.unwrap(), b"pong");
        assert!(rx.recv().await.is_none(), "EOF ends the pump");
    }

    #[tokio::test]
    async fn a_pty_echoes_and_resizes() {
        let s = Stdio::new(true, true, 10, 20, None).unwrap();
        let pty = s.ends.pty.clone().unwrap();
        resize(&pty, 30, 100).unwrap();
        let ws = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let mut ws = ws;
        // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer.
        unsafe { libc::ioctl(s.child[0].as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        nix::unistd::write(&s.child[1], b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = read(&s.ends.out, &mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
    }
}
