use super::*;
use vpod_agent_api::pb::SeccompRule as Rule;
use vpod_agent_api::seccomp::runtime_default;

/// Runs `probe` in a forked child after installing `progs` there; returns its
/// exit code. The child makes raw syscalls only (the test binary has other
/// threads, so nothing that may take a lock).
fn in_child(progs: &[BpfProgram], probe: fn() -> i32) -> i32 {
    // SAFETY: the child only makes raw syscalls and _exits.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let code = match install(progs) {
                Ok(()) => probe(),
                Err(_) => 200,
            };
            // SAFETY: ends the forked child without running the parent's atexit or destructors.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for our own child into a valid int.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            if libc::WIFSIGNALED(status) {
                return 1000 + libc::WTERMSIG(status);
            }
            libc::WEXITSTATUS(status)
        }
    }
}

/// -errno of a raw syscall, or its result.
fn raw(nr: libc::c_long, a: u64, b: u64) -> i64 {
    // SAFETY: the probes' syscalls take integer arguments only, or null pointers.
    let r = unsafe { libc::syscall(nr, a, b, 0, 0, 0, 0) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r
    }
}

#[test]
fn runtime_default_is_an_allow_list_that_fits_the_kernel() {
    let rules = runtime_default();
    let progs = compile(&rules).unwrap();
    assert_eq!(progs.len(), 2, "default filter and clone3's ENOSYS");
    assert!(progs.iter().all(|p| p.len() <= 4096));
    assert_eq!(rules.default_action, Action::Errno as i32);
    assert!(!rules.syscalls[0].names.contains(&"kexec_load".to_owned()));
    assert!(rules.syscalls[0].names.contains(&"read".to_owned()));
}

#[test]
fn runtime_default_refuses_namespaces_and_personas_but_not_the_rest() {
    let progs = compile(&runtime_default()).unwrap();
    let code = in_child(&progs, || {
        let mut bad = 0;
        if raw(libc::SYS_getpid, 0, 0) <= 0 {
            bad |= 1;
        }
        if raw(libc::SYS_unshare, libc::CLONE_NEWUSER as u64, 0) != -(libc::EPERM as i64) {
            bad |= 2;
        }
        // clone3(NULL, 0): ENOSYS, so libc falls back to clone.
        if raw(libc::SYS_clone3, 0, 0) != -(libc::ENOSYS as i64) {
            bad |= 4;
        }
        // clone with CLONE_NEWUSER: refused before it does anything.
        if raw(libc::SYS_clone, libc::CLONE_NEWUSER as u64, 0) != -(libc::EPERM as i64) {
            bad |= 8;
        }
        if raw(libc::SYS_personality, 0xffff_ffff, 0) < 0 {
            bad |= 16;
        }
        if raw(libc::SYS_personality, 0x0006, 0) != -(libc::EPERM as i64) {
            bad |= 32;
        }
        if raw(libc::SYS_mount, 0, 0) != -(libc::EPERM as i64) {
            bad |= 64;
        }
        bad
    });
    assert_eq!(code, 0, "failed probes (bits): {code:#b}");
}

fn rule(names: &[&str], action: Action, errno: Option<u32>, args: Vec<SeccompArg>) -> Rule {
    Rule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: action as i32,
        errno,
        args,
    }
}

#[test]
fn a_profile_gives_each_rule_its_action_and_the_rest_the_default() {
    let profile = SeccompRules {
        default_action: Action::Errno as i32,
        default_errno: Some(libc::EACCES as u32),
        syscalls: vec![
            rule(
                &["exit_group", "exit", "no_such_syscall_in_any_kernel"],
                Action::Allow,
                None,
                vec![],
            ),
            rule(&["getppid"], Action::Errno, Some(99), vec![]),
            rule(
                &["dup"],
                Action::Allow,
                None,
                vec![SeccompArg {
                    index: 0,
                    value: 0,
                    value_two: 0,
                    op: SeccompOp::Eq as i32,
                }],
            ),
            // (arg0 & 0xf0) == 0x10
            rule(
                &["umask"],
                Action::Allow,
                None,
                vec![SeccompArg {
                    index: 0,
                    value: 0xf0,
                    value_two: 0x10,
                    op: SeccompOp::MaskedEq as i32,
                }],
            ),
        ],
    };
    let progs = compile(&profile).unwrap();
    let code = in_child(&progs, || {
        let mut bad = 0;
        if raw(libc::SYS_getppid, 0, 0) != -99 {
            bad |= 1;
        }
        let fd = raw(libc::SYS_dup, 0, 0);
        if fd < 0 {
            bad |= 2;
        }
        if raw(libc::SYS_dup, 1, 0) != -(libc::EACCES as i64) {
            bad |= 4;
        }
        if raw(libc::SYS_getuid, 0, 0) != -(libc::EACCES as i64) {
            bad |= 8;
        }
        if raw(libc::SYS_umask, 0o077, 0) != -(libc::EACCES as i64) {
            bad |= 16;
        }
        if raw(libc::SYS_umask, 0o027 & 0x1f, 0) < 0 {
            bad |= 32;
        }
        bad
    });
    assert_eq!(code, 0, "failed probes (bits): {code:#b}");
}

#[test]
fn a_kill_rule_kills_with_sigsys() {
    let profile = SeccompRules {
        default_action: Action::Allow as i32,
        default_errno: None,
        syscalls: vec![rule(&["getppid"], Action::KillProcess, None, vec![])],
    };
    let progs = compile(&profile).unwrap();
    assert_eq!(
        progs.len(),
        1,
        "an allowing default needs no default filter"
    );
    let code = in_child(&progs, || {
        raw(libc::SYS_getppid, 0, 0);
        0
    });
    assert_eq!(code, 1000 + libc::SIGSYS);
}

#[test]
fn rules_it_cannot_express_are_errors_that_name_them() {
    let bad_op = SeccompRules {
        default_action: Action::Errno as i32,
        default_errno: None,
        syscalls: vec![rule(
            &["read"],
            Action::Allow,
            None,
            vec![SeccompArg {
                index: 7,
                value: 0,
                value_two: 0,
                op: SeccompOp::Eq as i32,
            }],
        )],
    };
    let e = compile(&bad_op).unwrap_err().to_string();
    assert!(e.contains("read") && e.contains("index 7"), "{e}");
    let no_default = SeccompRules::default();
    assert!(matches!(compile(&no_default), Err(SeccompError::NoDefault)));
    let no_action = SeccompRules {
        default_action: Action::Allow as i32,
        default_errno: None,
        syscalls: vec![rule(&["read"], Action::Unspecified, None, vec![])],
    };
    assert!(compile(&no_action)
        .unwrap_err()
        .to_string()
        .contains("no action"));
}
