//! Boot and exit metrics: time from process start to the first KVM_RUN, userspace exits counted
//! by reason, and KVM's own per-vCPU binary stats (KVM_GET_STATS_FD) summed over vCPUs.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Exit reasons we count in userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// KVM_EXIT_IO, a port read.
    IoIn,
    /// KVM_EXIT_IO, a port write.
    IoOut,
    /// KVM_EXIT_MMIO, a read.
    MmioRead,
    /// KVM_EXIT_MMIO, a write.
    MmioWrite,
    /// KVM_EXIT_HLT.
    Hlt,
    /// KVM_EXIT_SHUTDOWN (triple fault).
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT (reset, shutdown, crash).
    SystemEvent,
    /// KVM_EXIT_INTR (a signal: the kick at teardown).
    Intr,
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError,
    /// Anything else.
    Other,
}

const KINDS: [(ExitKind, &str); 11] = [
    (ExitKind::IoIn, "io_in"),
    (ExitKind::IoOut, "io_out"),
    (ExitKind::MmioRead, "mmio_read"),
    (ExitKind::MmioWrite, "mmio_write"),
    (ExitKind::Hlt, "hlt"),
    (ExitKind::Shutdown, "shutdown"),
    (ExitKind::SystemEvent, "system_event"),
    (ExitKind::Intr, "intr"),
    (ExitKind::FailEntry, "fail_entry"),
    (ExitKind::InternalError, "internal_error"),
    (ExitKind::Other, "other"),
];

/// Shared by all vCPU threads of a VM.
#[derive(Debug)]
pub struct VmCounters {
    start: Instant,
    first_run: OnceLock<Instant>,
    exits: [AtomicU64; KINDS.len()],
    kvm_stats: Mutex<BTreeMap<String, u64>>,
    console_dropped: AtomicU64,
}

impl VmCounters {
    /// `start` is when the process (or the VM request) started; first-KVM_RUN time is relative to it.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            first_run: OnceLock::new(),
            exits: Default::default(),
            kvm_stats: Mutex::new(BTreeMap::new()),
            console_dropped: AtomicU64::new(0),
        }
    }

    /// Console bytes the guest wrote past the console file's cap.
    pub fn add_console_dropped(&self, n: u64) {
        self.console_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The first KVM_RUN is starting (only the first call counts).
    pub fn mark_first_run(&self) {
        let _ = self.first_run.set(Instant::now());
    }

    /// One userspace exit of `kind`.
    pub fn count(&self, kind: ExitKind) {
        let i = KINDS
            .iter()
            .position(|(k, _)| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        self.exits[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one vCPU's KVM stats to the totals.
    pub fn add_kvm_stats(&self, stats: BTreeMap<String, u64>) {
        let mut total = self.kvm_stats.lock().unwrap_or_else(|p| p.into_inner());
        for (name, v) in stats {
            *total.entry(name).or_default() += v;
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> VmMetrics {
        VmMetrics {
            start_to_first_kvm_run_us: self
                .first_run
                .get()
                .map(|t| t.saturating_duration_since(self.start).as_micros() as u64),
            userspace_exits: KINDS
                .iter()
                .zip(&self.exits)
                .map(|((_, name), c)| (name.to_string(), c.load(Ordering::Relaxed)))
                .collect(),
            kvm_stats: self
                .kvm_stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            run_time_us: Instant::now()
                .saturating_duration_since(self.start)
                .as_micros() as u64,
            console_bytes_dropped: self.console_dropped.load(Ordering::Relaxed),
        }
    }

    /// Time since the start instant.
    pub fn since_start(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }
}

/// What a VM run counted (`vpod-vmm --metrics` writes it as JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmMetrics {
    /// Microseconds from the start instant to the first KVM_RUN (None if no vCPU ever ran).
    pub start_to_first_kvm_run_us: Option<u64>,
    /// Exits handled by the VMM, by reason.
    pub userspace_exits: BTreeMap<String, u64>,
    /// KVM's per-vCPU exit counters (`exits`, `io_exits`, `mmio_exits`, `halt_exits`, ...), summed.
    pub kvm_stats: BTreeMap<String, u64>,
    /// Microseconds from the start instant to this snapshot.
    pub run_time_us: u64,
    /// Console output dropped because the console file reached its cap.
    pub console_bytes_dropped: u64,
}

/// KVM's ioctl number for a vCPU's binary stats fd (linux/kvm.h).
mod ioctls {
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, 0xAE, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

const KVM_STATS_TYPE_MASK: u32 = 0xf;
const KVM_STATS_TYPE_CUMULATIVE: u32 = 0;

/// Reads the cumulative single-value counters whose name mentions "exit" (plus halt wakeups) from
/// a vCPU's binary stats fd. Returns an empty map if the kernel has no KVM_GET_STATS_FD (< 5.14).
pub fn read_vcpu_stats(vcpu: &impl AsRawFd) -> BTreeMap<String, u64> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the vCPU fd is valid.
    let fd = unsafe { vmm_sys_util::ioctl::ioctl(vcpu, KVM_GET_STATS_FD()) };
    if fd < 0 {
        return BTreeMap::new();
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    parse_stats(&file).unwrap_or_default()
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn parse_stats(file: &impl FileExt) -> Option<BTreeMap<String, u64>> {
    let mut header = [0u8; 24];
    file.read_exact_at(&mut header, 0).ok()?;
    let name_size = read_u32(&header, 4)? as usize;
    let num_desc = read_u32(&header, 8)? as usize;
    let desc_offset = u64::from(read_u32(&header, 16)?);
    let data_offset = u64::from(read_u32(&header, 20)?);
    let desc_len = 16 + name_size;
    if num_desc > 4096 || name_size > 4096 {
        return None;
    }
    let mut descs = vec![0u8; desc_len * num_desc];
    file.read_exact_at(&mut descs, desc_offset).ok()?;
    let mut out = BTreeMap::new();
    for d in descs.chunks_exact(desc_len) {
        let flags = read_u32(d, 0)?;
        let size = u16::from_le_bytes([d[6], d[7]]);
        let offset = u64::from(read_u32(d, 8)?);
        let name_raw = &d[16..];
        let name_end = name_raw
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(name_raw.len());
        let name = String::from_utf8_lossy(&name_raw[..name_end]).into_owned();
        if flags & KVM_STATS_TYPE_MASK != KVM_STATS_TYPE_CUMULATIVE || size != 1 {
            continue;
        }
        if !(name.contains("exit") || name.starts_with("halt_wakeup")) {
            continue;
        }
        let mut v = [0u8; 8];
        file.read_exact_at(&mut v, data_offset + offset).ok()?;
        out.insert(name, u64::from_le_bytes(v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshot() {
        let c = VmCounters::new(Instant::now());
        assert_eq!(c.snapshot().start_to_first_kvm_run_us, None);
        c.mark_first_run();
        c.count(ExitKind::IoOut);
        c.count(ExitKind::IoOut);
        c.count(ExitKind::MmioRead);
        let mut s = BTreeMap::new();
        s.insert("exits".to_string(), 5);
        c.add_kvm_stats(s.clone());
        c.add_kvm_stats(s);
        let m = c.snapshot();
        assert!(m.start_to_first_kvm_run_us.is_some());
        assert_eq!(m.userspace_exits["io_out"], 2);
        assert_eq!(m.userspace_exits["mmio_read"], 1);
        assert_eq!(m.kvm_stats["exits"], 10);
        assert_eq!(m.console_bytes_dropped, 0);
        c.add_console_dropped(7);
        c.add_console_dropped(3);
        assert_eq!(c.snapshot().console_bytes_dropped, 10);
        serde_json::to_string(&m).unwrap();
    }

    #[test]
    fn parses_binary_stats() {
        // header(24) + 2 descriptors (name_size 16) + data.
        let name_size = 16u32;
        let desc_offset = 24u32;
        let data_offset = desc_offset + 2 * (16 + name_size);
        let mut b = Vec::new();
        for v in [0, name_size, 2, 0, desc_offset, data_offset] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut desc = |flags: u32, offset: u32, name: &str| {
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            b.extend_from_slice(&n);
        };
        desc(0, 0, "io_exits");
        desc(1, 8, "exits_instant"); // not cumulative: skipped
        b.extend_from_slice(&42u64.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all_at(&b, 0).unwrap();
        let m = parse_stats(f.as_file()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["io_exits"], 42);
    }
}
