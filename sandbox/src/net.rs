//! The pod's network, host side: CNI made a netns holding a veth with the
//! pod's IP. The pod's VMM runs its tap in that netns, tc mirred joins the
//! veth and the tap both ways, and the guest's eth0 takes the veth's MAC,
//! address and default route; so what CNI (and portmap, kube-proxy) set up
//! for the veth reaches the guest unchanged.
//!
//! Reading and plumbing the netns uses iproute2 (`ip -j`, `tc`) through
//! `nsenter`: they are on every node that runs CNI.

use std::path::{Path, PathBuf};
use std::process::Command;

use vpod_agent_api::pb::{ConfigureNetworkRequest, Ipv4Address, NetworkInterface};

/// The tap the VMM makes in the pod's netns.
pub const TAP_NAME: &str = "vpod0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("netns {0}: no interface with an IPv4 address besides lo (did CNI run?)")]
    NoInterface(PathBuf),
    #[error("parse `ip -j` output: {0}")]
    Parse(String),
}

/// What CNI gave the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub netns: PathBuf,
    pub veth: String,
    pub mac: [u8; 6],
    pub address: String,
    pub prefix_len: u32,
    pub gateway: Option<String>,
    pub mtu: u32,
}

fn run_in(netns: &Path, args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("nsenter --net={} {}", netns.display(), args.join(" "));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            cmd,
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
    let addrs: serde_json::Value = serde_json::from_str(&run_in(netns, &["ip", "-j", "addr"])?)
        .map_err(|e| NetError::Parse(e.to_string()))?;
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
    let routes: serde_json::Value =
        serde_json::from_str(&run_in(netns, &["ip", "-j", "-4", "route"])?)
            .map_err(|e| NetError::Parse(e.to_string()))?;
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

/// Brings the tap up and joins it and the veth with tc mirred redirects, both ways.
pub fn redirect(net: &PodNet, tap: &str) -> Result<(), NetError> {
    // The VMM makes the tap but leaves it down; a redirect into a down
    // device drops everything.
    run_in(&net.netns, &["ip", "link", "set", tap, "up"])?;
    for (from, to) in [(net.veth.as_str(), tap), (tap, net.veth.as_str())] {
        run_in(&net.netns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
        run_in(
            &net.netns,
            &[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
