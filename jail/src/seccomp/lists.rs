//! The allow-lists, as data: a first reading of what each VMM thread calls (vmm/src), to be
//! tightened with [`super::Mode::Log`] in the test bed. x86_64 syscall numbers.

/// The kinds of VMM thread, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs (waits, tears down, swaps disks, writes metrics), and the
    /// signal-waiting thread.
    Main,
    /// The device event loop: epoll, queues, block I/O, tap, vsock sockets, entropy.
    EventLoop,
    /// A vCPU: KVM_RUN and the exits it handles in place (MMIO/PIO into the buses, serial output).
    Vcpu,
}

/// One allowed syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// libc's constant name (`SYS_read`).
    pub name: &'static str,
    /// The syscall number.
    pub nr: i64,
    /// Which calls of it are allowed.
    pub arg: ArgRule,
}

/// A condition on one argument of an allowed syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgRule {
    /// Any arguments.
    Any,
    /// Argument `.0` (its low 32 bits) is one of `.1`.
    Eq(u8, &'static [u64]),
    /// Argument `.0` has none of the bits of `.1` set.
    MaskClear(u8, u64),
}

const fn io(ty: u64, nr: u64) -> u64 {
    (ty << 8) | nr
}

const fn ior(ty: u64, nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (ty << 8) | nr
}

const fn iow(ty: u64, nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (ty << 8) | nr
}

const KVMIO: u64 = 0xAE;
/// `KVM_RUN`.
pub const KVM_RUN: u64 = io(KVMIO, 0x80);
/// `KVM_GET_REGS` (struct kvm_regs, 144 bytes): an internal-error report reads the rip.
pub const KVM_GET_REGS: u64 = ior(KVMIO, 0x81, 144);
/// `KVM_GET_SREGS` (struct kvm_sregs, 312 bytes): the same report reads cr0/efer.
pub const KVM_GET_SREGS: u64 = ior(KVMIO, 0x83, 312);
/// `KVM_GET_STATS_FD`: a vCPU reads its KVM statistics as it ends.
pub const KVM_GET_STATS_FD: u64 = io(KVMIO, 0xCE);
/// `FIONBIO`: std's `set_nonblocking` on accepted vsock streams.
pub const FIONBIO: u64 = 0x5421;
/// `TUNSETOFFLOAD`: the net device sets the offloads the guest accepted (on activation, from the
/// vCPU thread whose MMIO write activates it, and on later feature changes).
pub const TUNSETOFFLOAD: u64 = iow(b'T' as u64, 208, 4);

macro_rules! list {
    ($($sys:ident $( ( $rule:expr ) )?),* $(,)?) => {
        &[$(Allowed {
            name: stringify!($sys),
            nr: libc::$sys,
            arg: list!(@rule $($rule)?),
        }),*]
    };
    (@rule) => { ArgRule::Any };
    (@rule $rule:expr) => { $rule };
}

const NO_EXEC: ArgRule = ArgRule::MaskClear(2, libc::PROT_EXEC as u64);

/// Any thread of a Rust program on glibc: memory, locks, signals' return, time, exit, stdio and
/// the file metadata calls std makes.
const COMMON: &[Allowed] = list![
    SYS_read,
    SYS_write,
    SYS_writev,
    SYS_close,
    SYS_futex,
    SYS_sched_yield,
    SYS_madvise,
    SYS_mmap(NO_EXEC),
    SYS_mprotect(NO_EXEC),
    SYS_munmap,
    SYS_mremap,
    SYS_brk,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_restart_syscall,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettid,
    SYS_getpid,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_getrandom,
    // Descriptor flags and close-on-exec copies (std's fd handling; a swapped disk's access mode).
    SYS_fcntl(ArgRule::Eq(
        1,
        &[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64
        ]
    )),
    SYS_exit,
    SYS_exit_group,
];

/// The main thread after start (wait, stop, teardown, disk swap, metrics file) and the thread
/// that waits for SIGTERM/SIGINT. No clone: every thread exists before this list is applied.
const MAIN: &[Allowed] = list![
    // The control channel (vpod_vmm::control): requests in, answers and the exit out, a disk's
    // fd with a swap (its access mode checked with F_GETFL).
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_poll,
    SYS_ppoll,
    SYS_openat,
    SYS_unlink,
    SYS_unlinkat,
    SYS_tgkill,
    SYS_rt_sigtimedwait,
];

/// The device event loop.
const EVENT_LOOP: &[Allowed] = list![
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_readv,
    SYS_pread64,
    SYS_pwrite64,
    SYS_fsync,
    SYS_fdatasync,
    SYS_socket(ArgRule::Eq(0, &[libc::AF_UNIX as u64])),
    SYS_connect,
    SYS_accept4,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_shutdown,
    SYS_unlink,
    SYS_unlinkat,
    SYS_ioctl(ArgRule::Eq(1, &[FIONBIO, TUNSETOFFLOAD])),
];

/// A vCPU thread.
const VCPU: &[Allowed] = list![
    // TUNSETOFFLOAD: the driver's DRIVER_OK write activates the net device on this thread.
    SYS_ioctl(ArgRule::Eq(
        1,
        &[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_STATS_FD,
            TUNSETOFFLOAD
        ]
    )),
    SYS_pread64,
    // The vCPU that sees the guest's poweroff may drop the devices' last reference: the vsock
    // device then removes its listening socket (in the jail, under /vsock only).
    SYS_unlink,
    SYS_unlinkat,
];

/// The allow-list of `kind`: the common part and its own.
pub fn allowed(kind: ThreadKind) -> Vec<Allowed> {
    let own = match kind {
        ThreadKind::Main => MAIN,
        ThreadKind::EventLoop => EVENT_LOOP,
        ThreadKind::Vcpu => VCPU,
    };
    COMMON.iter().chain(own).copied().collect()
}
