//! The VMM's allocator under its threads' seccomp lists. glibc gives each thread but the main
//! one an arena of its own (an mmap'd heap); freeing enough of one shrinks it, and the first
//! shrink in a process reads `/proc/sys/vm/overcommit_memory`: an `openat` that no thread's list
//! but the main one allows, so the kernel killed the whole VMM the first time its device thread
//! freed a few MiB (two big port-forward copies at once). [`vpod_jail::seccomp::one_arena`]
//! keeps every thread on the main arena, whose trim is `brk`.
//!
//! Each case runs in a child process of this test binary (`VPOD_ALLOC_CASE` names it), so the
//! filter never lands on the test harness.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use vpod_jail::seccomp::{self, Mode, ThreadKind};

/// What a device thread does under its list: allocates 32 MiB in 64 KiB pieces (below the mmap
/// threshold, so from its arena) and frees them, which trims the arena.
fn busy_thread() -> i32 {
    let prog = seccomp::program(ThreadKind::EventLoop, Mode::Enforce).unwrap();
    std::thread::spawn(move || {
        seccomp::apply(&prog).unwrap();
        for _ in 0..4 {
            let v: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 << 10]).collect();
            let sum: u64 = v.iter().map(|b| b[0] as u64).sum();
            drop(v);
            std::hint::black_box(sum);
        }
    })
    .join()
    .map(|()| 0)
    .unwrap_or(1)
}

fn run_case(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("VPOD_ALLOC_CASE", case)
        .status()
        .unwrap()
}

/// The child's side: does the case named in the environment (nothing otherwise).
#[test]
fn child() {
    let code = match std::env::var("VPOD_ALLOC_CASE").as_deref() {
        Ok("one-arena") => {
            assert!(seccomp::one_arena());
            busy_thread()
        }
        Ok("own-arena") => busy_thread(),
        _ => return,
    };
    std::process::exit(code);
}

#[test]
fn a_device_thread_frees_memory_under_its_list_when_threads_share_one_arena() {
    let st = run_case("one-arena");
    assert!(st.success(), "the thread's frees under its list: {st:?}");
}

/// What the fix is for: with arenas of their own, the same frees are a seccomp kill.
#[test]
fn without_it_the_first_trim_of_a_threads_arena_is_an_unlisted_openat() {
    let st = run_case("own-arena");
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
}
