//! The OCI spec's `linux.seccomp` in the agent's terms ([`SeccompRules`]), both ways: a spec's
//! profile (containerd renders Kubernetes' RuntimeDefault and Localhost profiles into it) is
//! interpreted rule by rule in the guest, and vpod's own RuntimeDefault is rendered as one for the
//! specs `vpod run` makes.
//!
//! What differs from runc (libseccomp), and why:
//! - `architectures` is not read: the guest runs x86_64 code only, and a syscall of another ABI
//!   (`int 0x80`) kills the process, as the filter's architecture check decides.
//! - `flags` (LOG, SPEC_ALLOW, TSYNC) are not applied: they change logging and speculation
//!   mitigations, not what is allowed.
//! - `SCMP_ACT_NOTIFY` is refused: a notify listener would be a host process the guest's
//!   syscalls wait on, which is what the VM boundary is there to rule out.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as OciAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator as OciOp, LinuxSyscall,
};
use vpod_agent_api::pb::{
    SeccompAction as Action, SeccompArg, SeccompOp as Op, SeccompRule, SeccompRules,
};

/// Why a spec's `linux.seccomp` can't be applied in the guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompSpecError {
    /// A user-space notifier (SCMP_ACT_NOTIFY, `listenerPath`) was asked for.
    #[error(
        "securityContext.seccompProfile: {what} is not supported: a seccomp notify listener \
         would be a host process the pod's syscalls wait on (use SCMP_ACT_ERRNO, \
         SCMP_ACT_KILL or SCMP_ACT_ALLOW rules)"
    )]
    Notify {
        /// The rule or field that asked for it.
        what: String,
    },
    /// An argument index past the sixth.
    #[error("securityContext.seccompProfile: syscall {names}: argument index {index} is not 0-5")]
    ArgIndex {
        /// The rule's syscall names.
        names: String,
        /// The index given.
        index: usize,
    },
}

/// The spec's profile as the agent's rules.
pub fn from_oci(s: &LinuxSeccomp) -> Result<SeccompRules, SeccompSpecError> {
    if let Some(p) = s.listener_path() {
        return Err(SeccompSpecError::Notify {
            what: format!("listenerPath {}", p.display()),
        });
    }
    let default_action = action(s.default_action(), || "defaultAction".into())?;
    let mut syscalls = Vec::new();
    for rule in s.syscalls().iter().flatten() {
        let names = rule.names().join(",");
        let act = action(rule.action(), || format!("the rule for {names}"))?;
        let mut args = Vec::new();
        for a in rule.args().iter().flatten() {
            if a.index() > 5 {
                return Err(SeccompSpecError::ArgIndex {
                    names,
                    index: a.index(),
                });
            }
            args.push(SeccompArg {
                index: a.index() as u32,
                value: a.value(),
                value_two: a.value_two().unwrap_or(0),
                op: op(a.op()) as i32,
            });
        }
        syscalls.push(SeccompRule {
            names: rule.names().clone(),
            action: act as i32,
            errno: rule.errno_ret(),
            args,
        });
    }
    Ok(SeccompRules {
        default_action: default_action as i32,
        default_errno: s.default_errno_ret(),
        syscalls,
    })
}

/// The agent's rules as an OCI `linux.seccomp` (what [`from_oci`] reads back unchanged).
pub fn to_oci(r: &SeccompRules) -> LinuxSeccomp {
    let mut s = LinuxSeccomp::default();
    s.set_default_action(oci_action(r.default_action()));
    s.set_default_errno_ret(r.default_errno);
    let rules = r
        .syscalls
        .iter()
        .map(|rule| {
            let mut o = LinuxSyscall::default();
            o.set_names(rule.names.clone());
            o.set_action(oci_action(rule.action()));
            o.set_errno_ret(rule.errno);
            let args: Vec<LinuxSeccompArg> = rule
                .args
                .iter()
                .map(|a| {
                    LinuxSeccompArgBuilder::default()
                        .index(a.index as usize)
                        .value(a.value)
                        .value_two(a.value_two)
                        .op(oci_op(a.op()))
                        .build()
                        .unwrap_or_default()
                })
                .collect();
            o.set_args((!args.is_empty()).then_some(args));
            o
        })
        .collect();
    s.set_syscalls(Some(rules));
    s
}

/// vpod's RuntimeDefault ([`vpod_agent_api::seccomp::runtime_default`]) as a spec's profile.
pub fn runtime_default() -> LinuxSeccomp {
    to_oci(&vpod_agent_api::seccomp::runtime_default())
}

fn action(a: OciAction, what: impl Fn() -> String) -> Result<Action, SeccompSpecError> {
    Ok(match a {
        // libseccomp's SCMP_ACT_KILL is the thread's kill.
        OciAction::ScmpActKill | OciAction::ScmpActKillThread => Action::KillThread,
        OciAction::ScmpActKillProcess => Action::KillProcess,
        OciAction::ScmpActTrap => Action::Trap,
        OciAction::ScmpActErrno => Action::Errno,
        OciAction::ScmpActTrace => Action::Trace,
        OciAction::ScmpActLog => Action::Log,
        OciAction::ScmpActAllow => Action::Allow,
        OciAction::ScmpActNotify => {
            return Err(SeccompSpecError::Notify {
                what: format!("SCMP_ACT_NOTIFY ({})", what()),
            })
        }
    })
}

fn oci_action(a: Action) -> OciAction {
    match a {
        Action::KillThread | Action::Unspecified => OciAction::ScmpActKillThread,
        Action::KillProcess => OciAction::ScmpActKillProcess,
        Action::Trap => OciAction::ScmpActTrap,
        Action::Errno => OciAction::ScmpActErrno,
        Action::Trace => OciAction::ScmpActTrace,
        Action::Allow => OciAction::ScmpActAllow,
        Action::Log => OciAction::ScmpActLog,
    }
}

fn op(o: OciOp) -> Op {
    match o {
        OciOp::ScmpCmpNe => Op::Ne,
        OciOp::ScmpCmpLt => Op::Lt,
        OciOp::ScmpCmpLe => Op::Le,
        OciOp::ScmpCmpEq => Op::Eq,
        OciOp::ScmpCmpGe => Op::Ge,
        OciOp::ScmpCmpGt => Op::Gt,
        OciOp::ScmpCmpMaskedEq => Op::MaskedEq,
    }
}

fn oci_op(o: Op) -> OciOp {
    match o {
        Op::Ne => OciOp::ScmpCmpNe,
        Op::Lt => OciOp::ScmpCmpLt,
        Op::Le => OciOp::ScmpCmpLe,
        Op::Eq | Op::Unspecified => OciOp::ScmpCmpEq,
        Op::Ge => OciOp::ScmpCmpGe,
        Op::Gt => OciOp::ScmpCmpGt,
        Op::MaskedEq => OciOp::ScmpCmpMaskedEq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_localhost_profile_is_kept_rule_by_rule() {
        let s = parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                            {"names":["personality"],"action":"SCMP_ACT_KILL",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                            {"names":["clone"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let r = from_oci(&s).unwrap();
        assert_eq!(r.default_action(), Action::Allow);
        assert_eq!(r.syscalls.len(), 3);
        assert_eq!(r.syscalls[0].names, ["mkdir", "mkdirat"]);
        assert_eq!(r.syscalls[0].action(), Action::Errno);
        assert_eq!(r.syscalls[0].errno, Some(13));
        assert_eq!(r.syscalls[1].action(), Action::KillThread);
        assert_eq!(r.syscalls[1].args[0].op(), Op::Eq);
        assert_eq!(r.syscalls[2].args[0].op(), Op::MaskedEq);
        assert_eq!(r.syscalls[2].args[0].value, 0x7E02_0000);
    }

    #[test]
    fn runtime_default_goes_through_oci_unchanged() {
        let r = vpod_agent_api::seccomp::runtime_default();
        let json = serde_json::to_string(&to_oci(&r)).unwrap();
        let back = from_oci(&parse(&json)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn notify_and_bad_indexes_are_refused_naming_the_field() {
        let e = from_oci(&parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("securityContext.seccompProfile"),
            "{e}"
        );
        assert!(e.to_string().contains("mkdir"), "{e}");
        let e = from_oci(&parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("listenerPath"), "{e}");
        let e = from_oci(&parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err();
        assert!(matches!(e, SeccompSpecError::ArgIndex { index: 6, .. }));
    }
}
