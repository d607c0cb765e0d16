//! The pod network, as the CNI spec (1.0) says a runtime runs it: a netns per pod (`ip netns`,
//! so `/run/netns/vpod-<id>`), each plugin of the network config list executed in order for
//! ADD with the previous one's result, in reverse for DEL. The pod's VM then puts its tap in
//! that netns (`vpod_sandbox::net`). `portMappings` reach the plugins that declare the
//! capability (portmap: hostPort).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The interface CNI makes in the netns (and the guest's eth0 copies).
const IFNAME: &str = "eth0";

/// A network config list (`.conflist`), or a single `.conf` as a list of one.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetworkList {
    /// Its CNI version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Its name.
    pub name: String,
    /// Its plugins, in ADD order.
    pub plugins: Vec<Value>,
}

/// A pod's network, once ADD succeeded: what DEL needs (saved in the pod's state dir, so a
/// server that was killed can DEL it when it starts again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The pod's netns (a file under `/run/netns`).
    pub netns: PathBuf,
    /// Its `ip netns` name.
    pub netns_name: String,
    /// The pod's IPs (without prefix length), first the primary.
    pub ips: Vec<String>,
    network: NetworkList,
    result: Value,
    container_id: String,
    args: String,
    mappings: Value,
}

impl Attachment {
    /// Writes it to `path` (0600).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut f, &data)
    }

    /// Reads one [`Attachment::save`] wrote.
    pub fn load(path: &Path) -> std::io::Result<Attachment> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }
}

/// A pod's identity, in CNI_ARGS.
#[derive(Debug, Clone)]
pub struct PodRef<'a> {
    /// The sandbox id.
    pub id: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
}

/// The CNI configuration of the node.
#[derive(Debug, Clone)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
}

impl Cni {
    /// CNI from `conf_dir`, plugins looked for in `bin_dirs`.
    pub fn new(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Cni {
        Cni {
            conf_dir: conf_dir.into(),
            bin_dirs: bin_dirs.to_vec(),
        }
    }

    /// The pod network: the first `.conflist` or `.conf` in the conf dir, by name (as
    /// containerd and CRI-O pick it). `Ok(None)`: there is none (NetworkReady is false).
    pub fn network(&self) -> Result<Option<NetworkList>, String> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.conf_dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.conf_dir.display())),
        };
        files.sort();
        let Some(path) = files.first() else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if v.get("plugins").is_some() {
            serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
        } else {
            // A lone plugin's config: its own name and version.
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(Some(NetworkList {
                cni_version: get("cniVersion"),
                name: get("name"),
                plugins: vec![v],
            }))
        }
    }

    /// Makes the pod's netns and ADDs it to the network, with `port_mappings` (portmap's
    /// `[{hostPort, containerPort, protocol, hostIP}]`). On failure nothing is left.
    pub async fn add(
        &self,
        network: NetworkList,
        pod: &PodRef<'_>,
        port_mappings: Value,
    ) -> Result<Attachment, String> {
        let netns_name = format!("vpod-{}", pod.id);
        ip_netns(&["add", &netns_name]).await?;
        let mut att = Attachment {
            netns: Path::new("/run/netns").join(&netns_name),
            netns_name,
            ips: Vec::new(),
            network,
            result: Value::Null,
            container_id: pod.id.into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                pod.namespace, pod.name, pod.id, pod.uid
            ),
            mappings: port_mappings,
        };
        let plugins = att.network.plugins.clone();
        let mut prev = Value::Null;
        for p in &plugins {
            match self.exec("ADD", &att, p, &prev).await {
                Ok(r) => prev = r,
                Err(e) => {
                    att.result = prev;
                    self.del(&att).await;
                    return Err(e);
                }
            }
        }
        att.ips = prev
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .map(|a| a.split('/').next().unwrap_or(a).to_owned())
            .collect();
        att.result = prev;
        Ok(att)
    }

    /// DELs the pod from the network (every plugin, last first; each failure logged, none
    /// stopping the rest) and removes its netns. Doing it twice is harmless.
    pub async fn del(&self, att: &Attachment) {
        for p in att.network.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", att, p, &att.result).await {
                tracing::warn!("pod {}: CNI DEL: {e}", att.container_id);
            }
        }
        if att.netns.exists() {
            if let Err(e) = ip_netns(&["delete", &att.netns_name]).await {
                tracing::warn!("pod {}: {e}", att.container_id);
            }
        }
    }

    /// Runs one plugin for `cmd`: its config on stdin (the list's name and version, the
    /// previous result, the runtime config it has the capabilities for), its result on stdout.
    async fn exec(
        &self,
        cmd: &str,
        att: &Attachment,
        plugin: &Value,
        prev: &Value,
    ) -> Result<Value, String> {
        let typ = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or("a CNI plugin config without a type")?;
        if typ.contains('/') || typ.is_empty() {
            return Err(format!("CNI plugin type {typ:?} is not a plugin name"));
        }
        let bin = self
            .bin_dirs
            .iter()
            .map(|d| d.join(typ))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("CNI plugin {typ} is in none of {:?}", self.bin_dirs))?;
        let mut conf = plugin.clone();
        conf["name"] = json!(att.network.name);
        conf["cniVersion"] = json!(att.network.cni_version);
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        let wants_ports = plugin
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports && att.mappings.as_array().is_some_and(|a| !a.is_empty()) {
            conf["runtimeConfig"] = json!({"portMappings": att.mappings});
        }
        let path = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", path)
            .env("CNI_ARGS", &att.args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("CNI plugin {}: {e}", bin.display()))?;
        let input = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input).await;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("CNI plugin {typ} {cmd}: no answer in {PLUGIN_TIMEOUT:?}"))?
            .map_err(|e| format!("CNI plugin {typ} {cmd}: {e}"))?;
        if !out.status.success() {
            // The spec's error object: {"code", "msg", "details"}.
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let msg = err.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = err
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!(
                "CNI plugin {typ} {cmd} failed ({}): {msg} {details} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if cmd == "DEL" || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.clone());
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("CNI plugin {typ} {cmd}: its result: {e}"))
    }
}

/// `ip netns <args>`.
async fn ip_netns(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .arg("netns")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("ip netns {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip netns {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_config_by_name_is_the_network_and_a_lone_conf_is_a_list() {
        let dir = std::env::temp_dir().join(format!("vpod-cni-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cni = Cni::new(&dir, &[]);
        assert!(cni.network().unwrap().is_none());
        std::fs::write(
            dir.join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        let n = cni.network().unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.plugins.len()), ("b", 1));
        std::fs::write(
            dir.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let n = cni.network().unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.plugins.len()), ("a", 2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
