//! Seccomp for containers: a filter given as rules (the OCI spec's
//! `linux.seccomp`, [`SeccompRules`], or vpod's RuntimeDefault,
//! [`vpod_agent_api::seccomp::runtime_default`]) compiled to BPF with
//! seccompiler.
//!
//! seccompiler gives one filter a single match action, while an OCI profile
//! gives each rule its own. The kernel runs every installed filter and keeps
//! the most restrictive answer (for equal actions, the newest filter's data),
//! so a profile becomes a stack:
//! 1. the default filter (installed last, as it may refuse `seccomp`): every syscall named by any rule (under that rule's
//!    argument conditions) is allowed, anything else gets the default action;
//! 2. one filter per other action: its rules' syscalls get that action,
//!    anything else is allowed.
//!
//! A syscall that matches a rule of action A is allowed by (1) and gets A
//! from (2); one that matches no rule gets the default from (1). Only a
//! syscall matched by rules of two different actions differs from
//! libseccomp's answer: it gets the more restrictive one. Only x86_64's
//! syscall table is loaded: 32-bit (x86, x32) syscalls are killed.

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use syscalls::Sysno;
use vpod_agent_api::pb::{SeccompAction as Action, SeccompArg, SeccompOp, SeccompRules};

/// Why the filter could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule the filter can't express.
    #[error("seccomp rule for {names}: {what}")]
    Rule {
        /// The rule's syscall names.
        names: String,
        /// What is wrong with it.
        what: String,
    },
    /// The default action is missing.
    #[error("seccomp: the profile has no default action")]
    NoDefault,
    /// The rules did not make a filter.
    #[error("build the seccomp filter: {0}")]
    Build(#[source] BackendError),
    /// The filter did not compile to BPF.
    #[error("compile the seccomp filter: {0}")]
    Compile(#[source] BackendError),
    /// More instructions than the kernel takes in one filter.
    #[error("the seccomp filter has {0} instructions; the kernel takes at most 4096")]
    TooLong(usize),
    /// The kernel refused it.
    #[error("install the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
}

/// Compiled filters in the order to install them, in a form that travels in
/// the init's JSON config (`(code, jt, jf, k)` per instruction).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Filters(Vec<Vec<(u16, u8, u8, u32)>>);

impl Filters {
    /// seccompiler's programs again.
    pub fn programs(&self) -> Vec<BpfProgram> {
        self.0
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                    .collect()
            })
            .collect()
    }
}

/// The filters a container's process gets: none when privileged (as with runc: privileged
/// containers run unconfined), the spec's rules when it has them, else its profile's.
pub fn for_process(
    p: &vpod_agent_api::pb::Process,
    privileged: bool,
) -> Result<Filters, SeccompError> {
    use vpod_agent_api::pb::SeccompProfile;
    let progs = match (&p.seccomp_rules, p.seccomp()) {
        _ if privileged => Vec::new(),
        (Some(rules), _) => compile(rules)?,
        (None, SeccompProfile::RuntimeDefault) => {
            compile(&vpod_agent_api::seccomp::runtime_default())?
        }
        (None, SeccompProfile::Unconfined) => Vec::new(),
    };
    Ok(Filters(
        progs
            .into_iter()
            .map(|p| p.into_iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect())
            .collect(),
    ))
}

/// The filters for `rules`, in the order to install them.
pub fn compile(rules: &SeccompRules) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(
        Action::try_from(rules.default_action).unwrap_or(Action::Unspecified),
        rules.default_errno,
    )
    .map_err(|_| SeccompError::NoDefault)?;
    // Per action, syscall number -> its rules (empty: any arguments).
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Chain>)> = Vec::new();
    let mut named: BTreeMap<i64, Chain> = BTreeMap::new();
    for r in &rules.syscalls {
        let what = |what: String| SeccompError::Rule {
            names: r.names.join(","),
            what,
        };
        let act = action(
            Action::try_from(r.action).unwrap_or(Action::Unspecified),
            r.errno,
        )
        .map_err(what)?;
        let cond = conditions(&r.args).map_err(what)?;
        for name in &r.names {
            // Unknown to this kernel's table: nothing can call it (libseccomp skips it too).
            let Ok(nr) = Sysno::from_str(name) else {
                continue;
            };
            let nr = i64::from(nr.id());
            named.entry(nr).or_default().add(cond.clone());
            if act == default {
                continue;
            }
            let pos = match by_action.iter().position(|(a, _)| *a == act) {
                Some(p) => p,
                None => {
                    by_action.push((act.clone(), BTreeMap::new()));
                    by_action.len() - 1
                }
            };
            by_action[pos].1.entry(nr).or_default().add(cond.clone());
        }
    }
    let mut progs = Vec::new();
    for (act, chains) in by_action {
        if act != SeccompAction::Allow {
            progs.push(filter(chains, SeccompAction::Allow, act)?);
        }
    }
    // Last: it may refuse `seccomp` itself, which the ones before allow.
    if default != SeccompAction::Allow {
        progs.push(filter(named, default, SeccompAction::Allow)?);
    }
    Ok(progs)
}

/// The rules of one syscall in one filter: any of them matches; `any` once
/// one of them has no conditions (the syscall matches whatever its arguments).
#[derive(Default)]
struct Chain {
    any: bool,
    rules: Vec<SeccompRule>,
}

impl Chain {
    fn add(&mut self, cond: Option<SeccompRule>) {
        match cond {
            None => self.any = true,
            Some(rule) => self.rules.push(rule),
        }
    }

    /// seccompiler's form: no rules means any arguments.
    fn into_rules(self) -> Vec<SeccompRule> {
        if self.any {
            Vec::new()
        } else {
            self.rules
        }
    }
}

fn filter(
    chains: BTreeMap<i64, Chain>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let rules = chains
        .into_iter()
        .map(|(nr, c)| (nr, c.into_rules()))
        .collect();
    let f = SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
        .map_err(SeccompError::Build)?;
    let prog = BpfProgram::try_from(f).map_err(SeccompError::Compile)?;
    if prog.len() > 4096 {
        return Err(SeccompError::TooLong(prog.len()));
    }
    Ok(prog)
}

fn action(a: Action, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match a {
        Action::Unspecified => return Err("no action".into()),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Errno => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        Action::Trace => SeccompAction::Trace(errno.unwrap_or(0)),
        Action::Allow => SeccompAction::Allow,
        Action::Log => SeccompAction::Log,
    })
}

/// The rule's argument checks as one seccompiler rule (all must hold); None
/// when there are none.
fn conditions(args: &[SeccompArg]) -> Result<Option<SeccompRule>, String> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut conds = Vec::with_capacity(args.len());
    for a in args {
        let index = u8::try_from(a.index)
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| format!("argument index {} (a syscall has 6)", a.index))?;
        let (op, value) = match SeccompOp::try_from(a.op).unwrap_or(SeccompOp::Unspecified) {
            SeccompOp::Unspecified => return Err(format!("no operator for argument {index}")),
            SeccompOp::Ne => (SeccompCmpOp::Ne, a.value),
            SeccompOp::Lt => (SeccompCmpOp::Lt, a.value),
            SeccompOp::Le => (SeccompCmpOp::Le, a.value),
            SeccompOp::Eq => (SeccompCmpOp::Eq, a.value),
            SeccompOp::Ge => (SeccompCmpOp::Ge, a.value),
            SeccompOp::Gt => (SeccompCmpOp::Gt, a.value),
            SeccompOp::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
        };
        conds.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| e.to_string())?,
        );
    }
    SeccompRule::new(conds).map(Some).map_err(|e| e.to_string())
}

/// Installs `progs` on the calling thread, in order. Unlike
/// `seccompiler::apply_filter` it does not set no_new_privs: without it the
/// caller must still hold CAP_SYS_ADMIN, and no_new_privs is the spec's
/// choice.
pub fn install(progs: &[BpfProgram]) -> Result<(), SeccompError> {
    for prog in progs {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program; `prog` outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
