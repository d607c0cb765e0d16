//! vpod's RuntimeDefault seccomp profile, as the rules the agent compiles
//! (`pb::SeccompRules`, the OCI spec's `linux.seccomp` in the agent's terms):
//! one definition for the guest (`SeccompProfile::RuntimeDefault`) and the
//! host (`vpod run` puts it in its specs).

use syscalls::Sysno;

use crate::pb::{
    SeccompAction as Action, SeccompArg, SeccompOp, SeccompRule as Rule, SeccompRules,
};

/// Not allowed outright by RuntimeDefault (`clone`, `clone3` and `personality` get their own
/// rules): what Docker's and containerd's profiles refuse to a container without CAP_SYS_ADMIN
/// (kernel modules, kexec, keyrings, bpf, mounts and namespaces, clocks, swap, reboot, perf,
/// userfaultfd).
pub const DENIED: &[Sysno] = &[
    Sysno::acct,
    Sysno::add_key,
    Sysno::bpf,
    Sysno::clock_adjtime,
    Sysno::clock_settime,
    Sysno::settimeofday,
    Sysno::adjtimex,
    Sysno::delete_module,
    Sysno::finit_module,
    Sysno::init_module,
    Sysno::create_module,
    Sysno::get_kernel_syms,
    Sysno::query_module,
    Sysno::kexec_file_load,
    Sysno::kexec_load,
    Sysno::keyctl,
    Sysno::request_key,
    Sysno::lookup_dcookie,
    Sysno::mount,
    Sysno::umount2,
    Sysno::move_mount,
    Sysno::open_tree,
    Sysno::fsopen,
    Sysno::fsconfig,
    Sysno::fsmount,
    Sysno::fspick,
    Sysno::mount_setattr,
    Sysno::pivot_root,
    Sysno::nfsservctl,
    Sysno::open_by_handle_at,
    Sysno::perf_event_open,
    Sysno::quotactl,
    Sysno::quotactl_fd,
    Sysno::reboot,
    Sysno::setns,
    Sysno::unshare,
    Sysno::swapon,
    Sysno::swapoff,
    Sysno::sysfs,
    Sysno::_sysctl,
    Sysno::uselib,
    Sysno::userfaultfd,
    Sysno::ustat,
    Sysno::iopl,
    Sysno::ioperm,
    Sysno::syslog,
    Sysno::vhangup,
    Sysno::personality,
    Sysno::clone3,
    Sysno::clone,
];

/// Linux's EPERM and ENOSYS (the same on every architecture).
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// `clone` flags that make namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET): RuntimeDefault allows `clone` without them.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;
/// `personality` personas RuntimeDefault allows: PER_LINUX, its
/// UNAME26 variant, and the query.
const PERSONALITIES: [u64; 3] = [0x0, 0x0002_0000, 0xffff_ffff];

/// vpod's RuntimeDefault as rules: an allow-list of every syscall of the
/// table this agent was built with but [`DENIED`] (so a syscall newer than
/// the table is refused, as in containerd's), `clone` without namespace
/// flags, `personality` for Linux personas, and `clone3` answering ENOSYS so
/// libc falls back to the checkable `clone`. Everything else gets EPERM.
pub fn runtime_default() -> SeccompRules {
    let allowed: Vec<String> = Sysno::iter()
        .filter(|s| !DENIED.contains(s))
        .map(|s| s.name().to_owned())
        .collect();
    let rule = |names: &[&str], action: Action, errno, args| Rule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: action as i32,
        errno,
        args,
    };
    let mut syscalls = vec![Rule {
        names: allowed,
        action: Action::Allow as i32,
        errno: None,
        args: Vec::new(),
    }];
    syscalls.push(rule(
        &["clone"],
        Action::Allow,
        None,
        vec![SeccompArg {
            index: 0,
            value: CLONE_NAMESPACES,
            value_two: 0,
            op: SeccompOp::MaskedEq as i32,
        }],
    ));
    for p in PERSONALITIES {
        syscalls.push(rule(
            &["personality"],
            Action::Allow,
            None,
            vec![SeccompArg {
                index: 0,
                value: p,
                value_two: 0,
                op: SeccompOp::Eq as i32,
            }],
        ));
    }
    syscalls.push(rule(&["clone3"], Action::Errno, Some(ENOSYS), Vec::new()));
    SeccompRules {
        default_action: Action::Errno as i32,
        default_errno: Some(EPERM),
        syscalls,
    }
}
