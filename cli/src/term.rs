//! The host terminal for `-t`: raw mode while a container owns it, and its
//! size for the guest's pty.

use std::os::fd::BorrowedFd;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Puts stdin in raw mode; restores it when dropped.
pub struct RawMode(Option<Termios>);

impl RawMode {
    /// Raw mode if stdin is a terminal; a no-op guard otherwise.
    pub fn enter() -> RawMode {
        let fd = stdin();
        let Ok(orig) = tcgetattr(fd) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(fd, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = tcsetattr(stdin(), SetArg::TCSANOW, orig);
        }
    }
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// (rows, cols) of the terminal on stdout, if it is one.
pub fn size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row as u32, ws.ws_col as u32))
}

/// Hands `resize` the terminal's size each time it changes (SIGWINCH), for as long as the task
/// runs. A failed resize is not fatal: the next change tries again.
pub async fn forward_resizes<F, R, E>(mut resize: F)
where
    F: FnMut(u32, u32) -> R,
    R: std::future::Future<Output = Result<(), E>>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((rows, cols)) = size() {
            let _ = resize(rows, cols).await;
        }
    }
}
