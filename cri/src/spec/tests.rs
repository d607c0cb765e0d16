use super::*;
use k8s_cri::v1::{
    Capability, ContainerMetadata, KeyValue, LinuxContainerConfig, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, PodSandboxMetadata,
};
use vpod_sandbox::MountClassifier;

fn pod(net: NamespaceMode, pid: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "p".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "p".into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: net as i32,
                    pid: pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image() -> RuntimeConfig {
    RuntimeConfig {
        entrypoint: Some(vec!["/entry".into()]),
        cmd: Some(vec!["default-arg".into()]),
        env: Some(vec!["A=image".into(), "B=image".into()]),
        user: Some("1000:1000".into()),
        ..Default::default()
    }
}

fn config(command: &[&str], args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: vec![KeyValue {
            key: "B".into(),
            value: "mine".into(),
        }],
        ..Default::default()
    }
}

fn spec_of(c: &ContainerConfig, p: &PodSandboxConfig) -> Spec {
    let img = image();
    container_spec(c, p, &img).unwrap()
}

fn container_spec(c: &ContainerConfig, p: &PodSandboxConfig, img: &RuntimeConfig) -> Result<Spec> {
    super::container(
        c,
        &ContainerInputs {
            pod: p,
            image: img,
            image_name: "busybox",
            shared_pid: None,
            resolv_conf: None,
            seccomp_root: Path::new("/nonexistent"),
        },
    )
}

fn args(s: &Spec) -> Vec<String> {
    s.process().as_ref().unwrap().args().clone().unwrap()
}

#[test]
fn command_and_args_follow_kubernetes_rules_over_the_image() {
    let p = pod(NamespaceMode::Pod, NamespaceMode::Container);
    assert_eq!(
        args(&spec_of(&config(&[], &[]), &p)),
        ["/entry", "default-arg"]
    );
    assert_eq!(args(&spec_of(&config(&[], &["x"]), &p)), ["/entry", "x"]);
    assert_eq!(args(&spec_of(&config(&["sh"], &[]), &p)), ["sh"]);
    assert_eq!(
        args(&spec_of(&config(&["sh"], &["-c", "true"]), &p)),
        ["sh", "-c", "true"]
    );
    let s = spec_of(&config(&[], &[]), &p);
    let proc_ = s.process().as_ref().unwrap();
    let env = proc_.env().clone().unwrap();
    assert!(
        env.contains(&"A=image".into()) && env.contains(&"B=mine".into()),
        "{env:?}"
    );
    assert!(!env.contains(&"B=image".into()), "{env:?}");
    assert_eq!((proc_.user().uid(), proc_.user().gid()), (1000, 1000));
}

#[test]
fn an_image_without_a_command_needs_one_from_the_container() {
    let p = pod(NamespaceMode::Pod, NamespaceMode::Container);
    let e = container_spec(&config(&[], &[]), &p, &RuntimeConfig::default()).unwrap_err();
    assert!(e.to_string().contains("containers[].command"), "{e}");
}

#[test]
fn host_namespaces_are_refused_by_the_policy_naming_the_field() {
    let c = MountClassifier::new("/var/lib/kubelet");
    let ok = sandbox(&pod(NamespaceMode::Pod, NamespaceMode::Container)).unwrap();
    vpod_sandbox::check_spec(&ok, &c).unwrap();
    for (p, field) in [
        (
            pod(NamespaceMode::Node, NamespaceMode::Container),
            "hostNetwork",
        ),
        (pod(NamespaceMode::Pod, NamespaceMode::Node), "hostPID"),
    ] {
        let e = vpod_sandbox::check_spec(&sandbox(&p).unwrap(), &c).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn capabilities_are_containerds_defaults_with_the_contexts_adds_and_drops() {
    let p = pod(NamespaceMode::Pod, NamespaceMode::Container);
    let mut c = config(&["sh"], &[]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CAP_KILL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = spec_of(&c, &p);
    let caps = s
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let bounding: Vec<String> = caps
        .bounding()
        .clone()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert!(
        bounding.iter().any(|c| c == "CAP_NET_ADMIN"),
        "{bounding:?}"
    );
    assert!(!bounding.iter().any(|c| c == "CAP_KILL"), "{bounding:?}");
    assert!(bounding.iter().any(|c| c == "CAP_CHOWN"), "{bounding:?}");
}

#[test]
fn a_localhost_seccomp_profile_outside_kubelets_dir_is_refused() {
    let p = pod(NamespaceMode::Pod, NamespaceMode::Container);
    let mut c = config(&["sh"], &[]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "/etc/passwd".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = container_spec(&c, &p, &image()).unwrap_err().to_string();
    assert!(e.contains("localhostProfile"), "{e}");
}
