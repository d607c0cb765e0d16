//! The pod netns's loopback steered to our listener: a socket bound to [`LISTEN_ADDR`] inside the
//! netns (made by a thread that enters it, so the rest of the process stays where it is) and one
//! NAT rule there, `OUTPUT -d 127.0.0.1 -p tcp -j DNAT --to <listener>`, loaded with
//! `iptables-restore` (on every Kubernetes node: kube-proxy and CNI's portmap use it).

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};

/// Where the listener binds in the pod's netns: loopback, but not the address callers dial.
pub const LISTEN_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Why the loopback could not be steered.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// Entering the netns or binding the listener there failed.
    #[error("listen on {LISTEN_ADDR} in netns {netns}: {source}")]
    Listen {
        /// The netns.
        netns: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The NAT rule could not be loaded.
    #[error("load the port-forward NAT rule in netns {netns} ({cmd}): {why}")]
    Rule {
        /// The netns.
        netns: PathBuf,
        /// The command.
        cmd: String,
        /// What went wrong (its stderr).
        why: String,
    },
}

/// Makes the listener in `netns` (whose `lo` must be up) and points the netns's TCP connections to
/// 127.0.0.1 at it. Blocking (a thread and a process): call it off the async runtime.
pub fn steer(netns: &Path) -> Result<TcpListener, SteerError> {
    let listener = listen_in(netns).map_err(|source| SteerError::Listen {
        netns: netns.to_owned(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| SteerError::Listen {
            netns: netns.to_owned(),
            source,
        })?
        .port();
    load_rule(netns, port)?;
    Ok(listener)
}

/// Binds `LISTEN_ADDR:0` from a thread that has entered `netns`; the socket stays in that netns.
fn listen_in(netns: &Path) -> std::io::Result<TcpListener> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            TcpListener::bind(SocketAddrV4::new(LISTEN_ADDR, 0))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the netns thread panicked")))
    })
}

/// The rules `iptables-restore --noflush` adds in the netns.
fn rules(port: u16) -> String {
    format!(
        "*nat\n\
         -A OUTPUT -d 127.0.0.1/32 -p tcp -m comment --comment vpod-port-forward \
         -j DNAT --to-destination {LISTEN_ADDR}:{port}\n\
         COMMIT\n"
    )
}

fn load_rule(netns: &Path, port: u16) -> Result<(), SteerError> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .args(["iptables-restore", "-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let cmd = format!("{c:?}");
    let fail = |why: String| SteerError::Rule {
        netns: netns.to_owned(),
        cmd: cmd.clone(),
        why,
    };
    let mut child = c.spawn().map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules(port).as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// The port a steered connection was dialed to (conntrack's original destination).
pub(crate) fn original_port(conn: &tokio::net::TcpStream) -> std::io::Result<u16> {
    let dst = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)?;
    Ok(u16::from_be(dst.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use crate::net::TestNetns;

    #[test]
    fn the_rule_names_the_listener() {
        let r = rules(41234);
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"), "{r}");
        assert!(r.contains("-d 127.0.0.1/32 -p tcp"), "{r}");
        assert!(r.contains("--to-destination 127.0.0.2:41234"), "{r}");
    }

    /// Needs root, iproute2 and iptables (what CI and every Kubernetes node have): a connection
    /// to 127.0.0.1:PORT in the netns reaches the listener, which reads PORT back.
    #[tokio::test]
    async fn loopback_connections_in_the_netns_reach_the_listener_with_their_port() {
        let name = format!("vpodsteer{}", std::process::id());
        let _ns = TestNetns::add(&name);
        assert!(Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        let netns = Path::new("/run/netns").join(&name);
        let listener = steer(&netns).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        // A client in the netns: a thread that enters it.
        let ns = File::open(&netns).unwrap();
        let client = std::thread::spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            let mut s = std::net::TcpStream::connect("127.0.0.1:8123").unwrap();
            s.write_all(b"ping").unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).unwrap();
            back
        });
        let (mut conn, _) = listener.accept().await.unwrap();
        assert_eq!(original_port(&conn).unwrap(), 8123);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        drop(conn);
        assert_eq!(client.join().unwrap(), "pong");
        // Outside the netns nothing changed: the host's 127.0.0.1:8123 is not steered.
        assert!(std::net::TcpStream::connect("127.0.0.1:8123").is_err());
    }
}
