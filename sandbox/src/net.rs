//! The pod's network, host side: CNI made a netns holding a veth with the
//! pod's IP. The pod's VMM runs its tap in that netns, tc mirred joins the
//! veth and the tap both ways, and the guest's eth0 takes the veth's MAC,
//! address and default route; so what CNI (and portmap, kube-proxy) set up
//! for the veth reaches the guest unchanged.
//!
//! Reading and plumbing the netns uses iproute2 (`ip -j`, `tc`): they are on
//! every node that runs CNI. Each process start is costly (a pod start runs
//! three), so commands go in batches, and a netns named in /run/netns (what
//! CNI under containerd makes) is entered by `-n` rather than `nsenter`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vpod_agent_api::pb::{ConfigureNetworkRequest, Ipv4Address, NetworkInterface};

/// The tap the VMM makes in the pod's netns.
pub const TAP_NAME: &str = "vpod0";

/// Why the pod's network could not be read or plumbed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip`, `tc` or `nsenter` could not be run.
    #[error("run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// What it said.
        stderr: String,
    },
    /// The netns holds no interface CNI configured.
    #[error("netns {0}: no interface with an IPv4 address besides lo (did CNI run?)")]
    NoInterface(PathBuf),
    /// `ip -j` printed what could not be parsed.
    #[error("parse `ip -j` output: {0}")]
    Parse(String),
}

/// What CNI gave the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    /// The netns CNI made (a named one, see [`crate::policy::check_netns_path`]).
    pub netns: PathBuf,
    /// The veth CNI put in it.
    pub veth: String,
    /// The veth's MAC: the guest's eth0 carries it.
    pub mac: [u8; 6],
    /// The veth's IPv4 address (dotted quad).
    pub address: String,
    /// Its prefix length.
    pub prefix_len: u32,
    /// The default route's gateway, if any.
    pub gateway: Option<String>,
    /// The veth's MTU.
    pub mtu: u32,
}

/// `prog` (ip or tc) run in `netns`: `prog -n NAME` for a netns iproute2
/// knows by name, else through `nsenter`.
fn netns_command(netns: &Path, prog: &str) -> Command {
    let named = netns
        .parent()
        .filter(|d| *d == Path::new("/var/run/netns") || *d == Path::new("/run/netns"))
        .and(netns.file_name());
    match named {
        Some(name) => {
            let mut c = Command::new(prog);
            c.arg("-n").arg(name);
            c
        }
        None => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display())).arg(prog);
            c
        }
    }
}

/// Runs `prog args` in `netns` with `batch` (if any) as its stdin (`-batch -`).
fn run_in(
    netns: &Path,
    prog: &str,
    args: &[&str],
    batch: Option<&str>,
) -> Result<String, NetError> {
    use std::io::Write;
    let mut c = netns_command(netns, prog);
    c.args(args);
    let cmd = format!("{c:?}");
    let spawn_err = |source| NetError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.unwrap_or_default().as_bytes())
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetError::Failed {
            cmd: format!("{cmd} {}", batch.unwrap_or_default().replace('\n', "; ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// Reads the netns CNI prepared: its one non-loopback interface with IPv4.
pub fn inspect(netns: &Path) -> Result<PodNet, NetError> {
    // Addresses (with each link's MAC) and IPv4 routes: one `ip`, two JSON arrays.
    let out = run_in(netns, "ip", &["-j", "-batch", "-"], Some("addr\nroute\n"))?;
    let mut docs = serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>();
    let mut next = |what: &str| -> Result<serde_json::Value, NetError> {
        docs.next()
            .ok_or_else(|| NetError::Parse(format!("no {what} in `ip -j` output")))?
            .map_err(|e| NetError::Parse(e.to_string()))
    };
    let addrs = next("addresses")?;
    let routes = next("routes")?;
    let links = addrs.as_array().cloned().unwrap_or_default();
    let link = links
        .iter()
        .find(|l| {
            l["ifname"] != "lo"
                && l["ifname"] != TAP_NAME
                && l["addr_info"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["family"] == "inet"))
        })
        .ok_or_else(|| NetError::NoInterface(netns.to_path_buf()))?;
    let inet = link["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["family"] == "inet"))
        .ok_or_else(|| NetError::NoInterface(netns.to_path_buf()))?;
    let veth = link["ifname"].as_str().unwrap_or_default().to_owned();
    let mac = link["address"]
        .as_str()
        .and_then(parse_mac)
        .ok_or_else(|| NetError::Parse(format!("MAC of {veth}")))?;
    let gateway = routes.as_array().and_then(|rs| {
        rs.iter()
            .find(|r| r["dst"] == "default")
            .and_then(|r| r["gateway"].as_str().map(str::to_owned))
    });
    Ok(PodNet {
        netns: netns.to_path_buf(),
        veth,
        mac,
        address: inet["local"].as_str().unwrap_or_default().to_owned(),
        prefix_len: inet["prefixlen"].as_u64().unwrap_or(32) as u32,
        gateway,
        mtu: link["mtu"].as_u64().unwrap_or(0) as u32,
    })
}

/// Brings the tap and `lo` up and joins the tap and the veth with tc mirred redirects, both ways.
pub fn redirect(net: &PodNet, tap: &str) -> Result<(), NetError> {
    // The VMM makes the tap but leaves it down; a redirect into a down
    // device drops everything. `lo` for the port-forward listener (CNI's
    // loopback plugin may not have run).
    run_in(
        &net.netns,
        "ip",
        &["-batch", "-"],
        Some(&format!("link set {tap} up\nlink set lo up\n")),
    )?;
    let mut batch = String::new();
    for (from, to) in [(net.veth.as_str(), tap), (tap, net.veth.as_str())] {
        batch += &format!(
            "qdisc add dev {from} ingress\n\
             filter add dev {from} parent ffff: protocol all u32 match u8 0 0 \
             action mirred egress redirect dev {to}\n"
        );
    }
    run_in(&net.netns, "tc", &["-batch", "-"], Some(&batch))?;
    Ok(())
}

/// What the guest is told.
pub fn guest_request(net: &PodNet) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        interfaces: vec![NetworkInterface {
            name: "eth0".into(),
            addresses: vec![Ipv4Address {
                address: net.address.clone(),
                prefix_len: net.prefix_len,
            }],
            mtu: net.mtu,
        }],
        ipv4_gateway: net.gateway.clone().unwrap_or_default(),
    }
}

/// A named netns for tests (`ip netns add`), removed on drop.
#[cfg(test)]
pub(crate) struct TestNetns(pub String);

#[cfg(test)]
impl TestNetns {
    /// Adds netns `name`.
    pub fn add(name: &str) -> TestNetns {
        let st = Command::new("ip").args(["netns", "add", name]).status();
        assert!(st.is_ok_and(|s| s.success()), "ip netns add {name}");
        TestNetns(name.to_owned())
    }
}

#[cfg(test)]
impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    }

    /// Needs root and iproute2 (what CI and every CNI node have).
    #[test]
    fn a_cni_netns_is_read_and_plumbed_by_name_and_by_path() {
        let name = format!("vpodnettest{}", std::process::id());
        // Set up the way CNI's bridge plugin leaves it.
        let ns = TestNetns::add(&name);
        sh(&format!(
            "ip -n {n} link add eth0 address 0a:58:0a:59:07:05 type veth peer name vh0 \
             && ip -n {n} link set eth0 up && ip -n {n} link set vh0 up \
             && ip -n {n} addr add 10.89.7.5/24 dev eth0 \
             && ip -n {n} route add default via 10.89.7.1 \
             && ip -n {n} tuntap add dev {TAP_NAME} mode tap",
            n = ns.0
        ));
        let by_name = inspect(&Path::new("/var/run/netns").join(&name)).unwrap();
        assert_eq!(by_name.veth, "eth0");
        assert_eq!(by_name.mac, [0x0a, 0x58, 0x0a, 0x59, 7, 5]);
        assert_eq!(
            (by_name.address.as_str(), by_name.prefix_len),
            ("10.89.7.5", 24)
        );
        assert_eq!(by_name.gateway.as_deref(), Some("10.89.7.1"));
        // A netns given by another path goes through nsenter, same answer.
        let dir = std::env::temp_dir().join(format!("vpod-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let other = dir.join("ns");
        std::fs::write(&other, b"").unwrap();
        sh(&format!(
            "mount --bind /var/run/netns/{name} {}",
            other.display()
        ));
        let by_path = inspect(&other);
        let _ = Command::new("umount").arg(&other).status();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            PodNet {
                netns: by_name.netns.clone(),
                ..by_path.unwrap()
            },
            by_name
        );
        redirect(&by_name, TAP_NAME).unwrap();
        let filters = Command::new("tc")
            .args(["-n", &name, "filter", "show", "dev", TAP_NAME, "ingress"])
            .output()
            .unwrap();
        let filters = String::from_utf8_lossy(&filters.stdout);
        assert!(filters.contains("mirred"), "{filters}");
        // A second plumbing of the same netns fails, and says which command.
        let e = redirect(&by_name, TAP_NAME).unwrap_err();
        assert!(e.to_string().contains("qdisc add dev eth0 ingress"), "{e}");
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0a:58:00:05"),
            Some([0x0a, 0x58, 0x0a, 0x58, 0, 5])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("zz:58:0a:58:00:05"), None);
    }
}
