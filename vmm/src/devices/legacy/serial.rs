//! COM1 (vm-superio 16550A) at 0x3f8, IRQ 4 through an irqfd. Output goes to stdout, a file or
//! nowhere; a [`PanicWatcher`] in front of it spots "Kernel panic - not syncing" on the way.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::IrqTrigger;
use crate::devices::bus::BusDevice;
use crate::exit::ExitSignal;

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Passes bytes through to `out` and flags the VM when the kernel's panic line goes by.
pub struct PanicWatcher<W: Write> {
    out: W,
    /// How many bytes of `PANIC_MARKER` the stream currently matches.
    matched: usize,
    exit: Arc<ExitSignal>,
}

impl<W: Write> PanicWatcher<W> {
    pub fn new(out: W, exit: Arc<ExitSignal>) -> Self {
        Self {
            out,
            matched: 0,
            exit,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
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

pub type ConsoleOut = Box<dyn Write + Send>;

pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, PanicWatcher<ConsoleOut>>,
}

impl SerialDevice {
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
    fn watcher_ignores_near_misses() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = PanicWatcher::new(io::sink(), exit.clone());
        w.write_all(b"Kernel panic - not syncin\nKernel panic - syncing")
            .unwrap();
        assert!(!exit.panic_seen());
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
