use std::collections::BTreeSet;

use super::lists::*;
use super::*;

const KINDS: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::EventLoop, ThreadKind::Vcpu];

#[test]
fn every_list_compiles_and_lists_each_syscall_once() {
    for kind in KINDS {
        let mut seen = BTreeSet::new();
        for a in allowed(kind) {
            assert!(seen.insert(a.nr), "{kind:?} lists {} twice", a.name);
        }
        for mode in [Mode::Enforce, Mode::Log] {
            assert!(!program(kind, mode).unwrap().is_empty());
        }
    }
    let f = Filters::compile(Mode::Enforce).unwrap();
    assert_eq!(f.get(ThreadKind::Vcpu), &f.vcpu);
}

#[test]
fn no_list_can_make_processes_or_change_privileges() {
    let never = [
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_setuid,
        libc::SYS_setresuid,
        libc::SYS_flock,
        libc::SYS_kill,
        libc::SYS_prctl,
        libc::SYS_seccomp,
    ];
    for kind in KINDS {
        for a in allowed(kind) {
            assert!(!never.contains(&a.nr), "{kind:?} allows {}", a.name);
        }
    }
}

#[test]
fn ioctl_numbers_match_the_kernel_structs() {
    assert_eq!(KVM_RUN, 0xAE80);
    assert_eq!(
        KVM_GET_REGS,
        (2 << 30) | ((std::mem::size_of::<kvm_bindings::kvm_regs>() as u64) << 16) | 0xAE81
    );
    assert_eq!(
        KVM_GET_SREGS,
        (2 << 30) | ((std::mem::size_of::<kvm_bindings::kvm_sregs>() as u64) << 16) | 0xAE83
    );
    assert_eq!(KVM_GET_STATS_FD, 0xAECE);
    assert_eq!(TUNSETOFFLOAD, 0x4004_54D0);
    assert_eq!(FIONBIO, libc::FIONBIO);
}

/// Runs `body` in a forked child under `prog` and returns its wait status. The child only makes
/// raw syscalls (the test harness is multi-threaded; nothing that allocates or locks after fork).
fn in_child(prog: &BpfProgram, body: fn() -> i32) -> libc::c_int {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the child only calls prctl, seccomp, the syscalls in `body` and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw syscalls with valid arguments; `fprog` points at `prog`, alive in the copy.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if libc::syscall(libc::SYS_seccomp, 1, 0, &fprog) != 0 {
                libc::_exit(100);
            }
            libc::_exit(body());
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn ptrace_traceme() -> i32 {
    // SAFETY: PTRACE_TRACEME takes no pointers; the filter should kill us before it runs.
    unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
    7
}

fn kvm_run_on_bad_fd() -> i32 {
    // SAFETY: an ioctl on fd -1 only returns EBADF.
    unsafe { libc::ioctl(-1, KVM_RUN as _) };
    7
}

fn tcgets_on_bad_fd() -> i32 {
    // SAFETY: as above.
    unsafe { libc::ioctl(-1, libc::TCGETS) };
    7
}

fn exec_mapping() -> i32 {
    // SAFETY: an anonymous mapping; never touched.
    unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    7
}

#[test]
fn enforce_kills_the_process_on_an_unlisted_call() {
    let vcpu = program(ThreadKind::Vcpu, Mode::Enforce).unwrap();
    assert!(killed_by_sigsys(in_child(&vcpu, ptrace_traceme)));
    // ioctl is narrowed to its request numbers.
    let ok = in_child(&vcpu, kvm_run_on_bad_fd);
    assert!(libc::WIFEXITED(ok) && libc::WEXITSTATUS(ok) == 7, "{ok:#x}");
    assert!(killed_by_sigsys(in_child(&vcpu, tcgets_on_bad_fd)));
    // No executable memory.
    let main = program(ThreadKind::Main, Mode::Enforce).unwrap();
    assert!(killed_by_sigsys(in_child(&main, exec_mapping)));
}

#[test]
fn log_mode_lets_unlisted_calls_through() {
    let vcpu = program(ThreadKind::Vcpu, Mode::Log).unwrap();
    let st = in_child(&vcpu, tcgets_on_bad_fd);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
}
