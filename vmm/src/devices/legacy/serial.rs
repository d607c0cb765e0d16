//! COM1 (vm-superio 16550A) at 0x3f8, IRQ 4 through an irqfd. Output goes to stdout, a file or
//! nowhere; a [`PanicWatcher`] in front of it spots "Kernel panic - not syncing" on the way. A
//! console file is a [`CappedFile`]: the guest decides how much it writes, the host disk doesn't
//! pay for it past the cap.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::irq::IrqTrigger;
use crate::devices::bus::BusDevice;
use crate::exit::{ExitEvent, ExitSignal};

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// What the kernel prints (pr_emerg, so even with `quiet`) when `reboot(2)` halts or powers
/// off a machine without ACPI; its CPUs then halt for ever, so the VM ends here. This lets a
/// guest power off without port I/O from user space (a kernel without X86_IOPL_IOPERM).
const HALT_MARKERS: [&[u8]; 2] = [b"reboot: System halted", b"reboot: Power down"];
/// Longest line kept for the halt check (longer lines can't be one of the markers' lines).
const MAX_LINE: usize = 128;

/// Passes bytes through to `out`, flags the VM when the kernel's panic line goes by, and ends
/// it when the kernel reports a halt.
pub struct PanicWatcher<W: Write> {
    out: W,
    /// How many bytes of `PANIC_MARKER` the stream currently matches.
    matched: usize,
    /// The current line (its first MAX_LINE bytes), for the halt markers.
    line: Vec<u8>,
    exit: Arc<ExitSignal>,
}

impl<W: Write> std::fmt::Debug for PanicWatcher<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanicWatcher")
            .field("matched", &self.matched)
            .finish_non_exhaustive()
    }
}

impl<W: Write> PanicWatcher<W> {
    /// Watches what goes to `out`; panics and halts are reported to `exit`.
    pub fn new(out: W, exit: Arc<ExitSignal>) -> Self {
        Self {
            out,
            matched: 0,
            line: Vec::with_capacity(MAX_LINE),
            exit,
        }
    }

    fn end_of_line(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if HALT_MARKERS.iter().any(|m| line.ends_with(m)) {
            self.exit.signal(ExitEvent::Halted);
        }
        self.line.clear();
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.end_of_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
            // The marker has no repeated prefix, so on a mismatch we only need to retry its first byte.
            if b == PANIC_MARKER[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == PANIC_MARKER[0]);
            }
            if self.matched == PANIC_MARKER.len() {
                self.exit.set_panic_seen();
                self.matched = 0;
            }
        }
    }
}

impl<W: Write> Write for PanicWatcher<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        // Console output must never stop the guest: a full disk or closed stdout just drops bytes.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// Where the guest's console goes (a capped file, stdout, or nowhere).
pub type ConsoleOut = Box<dyn Write + Send>;

/// Written once at the end of a console file that reached its cap.
pub const TRUNCATED_MARKER: &[u8] =
    b"\n[vpod: console output truncated here: size limit reached]\n";

/// A console file that never grows past `limit` bytes (its size when opened counts): output past
/// the cap is dropped and counted in the VM's metrics, and the file ends with
/// [`TRUNCATED_MARKER`] (within the limit). The panic watcher in front still sees every byte.
#[derive(Debug)]
pub struct CappedFile {
    file: File,
    /// Bytes in the file (what was there when opened plus what we wrote).
    size: u64,
    limit: u64,
    truncated: bool,
    counters: Arc<crate::metrics::VmCounters>,
}

impl CappedFile {
    /// Caps `file` at `limit` bytes; dropped bytes are counted in `counters`.
    pub fn new(
        file: File,
        limit: u64,
        counters: Arc<crate::metrics::VmCounters>,
    ) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            size,
            limit,
            // A file already at its cap (a previous boot) gets nothing more, not even a marker.
            truncated: size >= limit,
            counters,
        })
    }

    /// Room for guest bytes: the cap minus the marker that has to fit after them.
    fn data_room(&self) -> u64 {
        self.limit
            .saturating_sub(TRUNCATED_MARKER.len() as u64)
            .saturating_sub(self.size)
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.truncated {
            self.counters.add_console_dropped(buf.len() as u64);
            return Ok(buf.len());
        }
        let room = usize::try_from(self.data_room()).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        if take > 0 {
            self.file.write_all(&buf[..take])?;
            self.size += take as u64;
        }
        if take < buf.len() {
            self.truncated = true;
            self.counters.add_console_dropped((buf.len() - take) as u64);
            if self.size + TRUNCATED_MARKER.len() as u64 <= self.limit {
                self.file.write_all(TRUNCATED_MARKER)?;
                self.size += TRUNCATED_MARKER.len() as u64;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// COM1: a 16550A UART (vm-superio) whose output goes through the [`PanicWatcher`].
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, PanicWatcher<ConsoleOut>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `out`, reporting panics and halts to `exit`.
    pub fn new(irq: IrqTrigger, out: ConsoleOut, exit: Arc<ExitSignal>) -> Self {
        Self {
            serial: Serial::new(irq, PanicWatcher::new(out, exit)),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn watcher_finds_marker_across_writes() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(Vec::new(), exit.clone());
        w.write_all(b"[ 1.0] KKernel pan").unwrap();
        assert!(!exit.panic_seen());
        w.write_all(b"ic - not syncing: VFS").unwrap();
        assert!(exit.panic_seen());
        assert_eq!(w.out, b"[ 1.0] KKernel panic - not syncing: VFS");
    }

    #[test]
    fn kernel_halt_line_ends_the_vm_as_poweroff() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(io::sink(), exit.clone());
        w.write_all(b"[    1.5] reboot: System halte").unwrap();
        assert_eq!(exit.event(), None);
        w.write_all(b"d\r\n").unwrap();
        assert_eq!(exit.event(), Some(ExitEvent::Halted));
        assert_eq!(exit.wait(), crate::exit::VmExit::Poweroff);

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(io::sink(), exit.clone());
        w.write_all(b"reboot: Power down\n").unwrap();
        assert_eq!(exit.event(), Some(ExitEvent::Halted));
        // Not a halt: other reboot lines, the marker mid-line, an overlong line.
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(io::sink(), exit.clone());
        w.write_all(b"reboot: Restarting system\nsaid reboot: System halted?\n")
            .unwrap();
        let mut long = vec![b'x'; 200];
        long.extend_from_slice(b"reboot: System halted\n");
        w.write_all(&long).unwrap();
        assert_eq!(exit.event(), None);
    }

    #[test]
    fn watcher_ignores_near_misses() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(io::sink(), exit.clone());
        w.write_all(b"Kernel panic - not syncin\nKernel panic - syncing")
            .unwrap();
        assert!(!exit.panic_seen());
    }

    #[test]
    fn console_file_stops_at_its_cap_and_counts_the_rest() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let counters = Arc::new(crate::metrics::VmCounters::new(std::time::Instant::now()));
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let limit = 4096u64;
        let out =
            CappedFile::new(tmp.as_file().try_clone().unwrap(), limit, counters.clone()).unwrap();
        let mut dev = SerialDevice::new(
            IrqTrigger(EventFd::new(0).unwrap()),
            Box::new(out),
            exit.clone(),
        );
        // A guest flooding the port with 64 KiB, then panicking.
        for i in 0..65_536u32 {
            dev.write(0, &[b'a' + (i % 26) as u8]);
        }
        for b in b"Kernel panic - not syncing\n" {
            dev.write(0, &[*b]);
        }
        let content = std::fs::read(tmp.as_path()).unwrap();
        assert_eq!(content.len() as u64, limit, "file capped");
        assert!(content.ends_with(TRUNCATED_MARKER));
        assert!(content.starts_with(b"abcdef"));
        let kept = limit - TRUNCATED_MARKER.len() as u64;
        assert_eq!(
            counters.snapshot().console_bytes_dropped,
            65_536 + 27 - kept,
            "every dropped byte counted"
        );
        assert!(
            exit.panic_seen(),
            "the panic watcher still sees dropped output"
        );

        // Reopened (a restarted VMM appending to the same file): still capped, nothing added.
        let counters = Arc::new(crate::metrics::VmCounters::new(std::time::Instant::now()));
        let mut again =
            CappedFile::new(tmp.as_file().try_clone().unwrap(), limit, counters.clone()).unwrap();
        again.write_all(b"more").unwrap();
        assert_eq!(std::fs::metadata(tmp.as_path()).unwrap().len(), limit);
        assert_eq!(counters.snapshot().console_bytes_dropped, 4);
    }

    #[test]
    fn serial_bytes_reach_output() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let path = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let file = path.as_file().try_clone().unwrap();
        let mut dev = SerialDevice::new(
            IrqTrigger(EventFd::new(0).unwrap()),
            Box::new(file),
            exit.clone(),
        );
        for b in b"Kernel panic - not syncing\n" {
            dev.write(0, &[*b]);
        }
        assert!(exit.panic_seen());
        assert_eq!(
            std::fs::read(path.as_path()).unwrap(),
            b"Kernel panic - not syncing\n"
        );
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
