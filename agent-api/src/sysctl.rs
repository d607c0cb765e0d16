//! Which sysctls a pod may set: those that live in the pod's own namespaces (its IPC namespace
//! and its network namespace, kubelet's namespaced list), named in dots, valued on one line.
//! The host refuses others before the pod boots; the agent checks again before writing any.

/// Whether `key=value` is a namespaced sysctl a pod may set.
pub fn namespaced(key: &str, value: &str) -> bool {
    let name_ok = !key.is_empty()
        && key.len() <= 128
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    let in_pod_ns = ["kernel.shm", "kernel.msg", "fs.mqueue.", "net."]
        .iter()
        .any(|p| key.starts_with(p))
        || key == "kernel.sem";
    let value_ok = value.len() <= 256 && !value.contains(['\n', '\0']);
    name_ok && in_pod_ns && value_ok
}

/// Why a sysctl is refused, for an error message naming the field.
pub fn refusal(key: &str, value: &str) -> String {
    format!(
        "sysctl {key}={value:?} (securityContext.sysctls) is refused: only namespaced ones \
         (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*) with a one-line value apply \
         to a pod; the others would change the pod's whole kernel"
    )
}

#[cfg(test)]
mod tests {
    use super::namespaced;

    #[test]
    fn only_namespaced_sysctls_pass() {
        for (k, v) in [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_local_port_range", "32768 60999"),
            ("net.core.somaxconn", "1024"),
            ("kernel.msgmax", "65536"),
            ("kernel.sem", "250 32000 100 128"),
            ("fs.mqueue.msg_max", "20"),
            ("net.ipv4.conf.eth0.forwarding", "1"),
        ] {
            assert!(namespaced(k, v), "{k}");
        }
        for (k, v) in [
            ("kernel.panic", "1"),
            ("vm.overcommit_memory", "1"),
            ("kernel.shmmax/../../panic", "1"),
            ("net..core", "1"),
            ("net.core.somaxconn", "1\n2"),
            ("", "1"),
            ("kernel.semx", "1"),
        ] {
            assert!(!namespaced(k, v), "{k}");
        }
    }
}
