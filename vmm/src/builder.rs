//! Config -> running VM. Everything is created and wired here in one pass; nothing reaches back.
//!
//! Kernel command line: `console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux i8042.nomux
//! i8042.nopnp i8042.dumbkbd random.trust_cpu=on` (+ `quiet` unless `verbose_kernel`), then one
//! `virtio_mmio.device=4K@0x<addr>:<irq>` per device, then the caller's extra arguments (last, so
//! they can override ours). With `Console::Off` we keep `console=ttyS0` and drop the bytes in the
//! VMM: the panic watcher still sees a kernel panic, and the guest's boot is identical either way.

use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::{layout, mptable, pvh};
use crate::config::{ConfigError, Console, VmConfig};
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::serial::{CappedFile, ConsoleOut};
use crate::devices::legacy::{IrqTrigger, ResetControl, SerialDevice, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mem::{HotplugRegion, Mem};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::mmio::{MmioError, REG_QUEUE_NOTIFY};
use crate::devices::virtio::transport::MmioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use crate::event_loop::{EventLoop, EventLoopError, Subscriber};
use crate::exit::ExitSignal;
pub use crate::host_files::HostFiles;
use crate::metrics::VmCounters;
use crate::running::{Devices, DiskSlot, MemSlot, Running, RunningVm};
use crate::threads::ThreadFilters;
use crate::vstate::memory::{create_guest_memory, with_hotplug_region, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// The kernel command line every VM starts with (see the module docs).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux \
                                   i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on";

/// Why a VM could not be built (the first step that failed).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The KVM VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel and initrd, or the PVH boot structures.
    #[error(transparent)]
    Boot(#[from] pvh::BootError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A disk.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A virtio-mmio transport.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// Two devices in one place.
    #[error("placing a device: {0}")]
    Bus(#[from] BusError),
    /// The kernel command line (too long, bad characters).
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The console file (path, error).
    #[error("opening console file {0}: {1}")]
    ConsoleFile(std::path::PathBuf, #[source] std::io::Error),
    /// Another host call (what, error).
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The NIC (tap, error).
    #[error("virtio-net on tap {0}: {1}")]
    Net(String, #[source] crate::devices::virtio::net::NetError),
    /// The hotplug region does not fit.
    #[error("virtio-mem: {0}")]
    Hotplug(String),
    /// The vsock device (socket path, error).
    #[error("virtio-vsock on {0}: {1}")]
    Vsock(
        std::path::PathBuf,
        #[source] crate::devices::virtio::vsock::VsockError,
    ),
}

/// Entry point: config in, running VM out.
#[derive(Debug)]
pub struct Vmm;

impl Vmm {
    /// Builds and starts a VM; metrics measure from now.
    pub fn start(config: VmConfig) -> Result<RunningVm, BuildError> {
        Self::start_at(config, Instant::now())
    }

    /// Like [`Vmm::start`], measuring "time to first KVM_RUN" from `started` (e.g. process start).
    pub fn start_at(config: VmConfig, started: Instant) -> Result<RunningVm, BuildError> {
        let files = HostFiles::open(&config)?;
        build(&config, files, &StartOptions::new(started))
    }

    /// Starts a VM from host files opened already ([`HostFiles::open`]), with `opts`.
    pub fn start_with(
        config: &VmConfig,
        files: HostFiles,
        opts: &StartOptions,
    ) -> Result<RunningVm, BuildError> {
        build(config, files, opts)
    }
}

/// How a VM is started beyond its config.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Where "time to first KVM_RUN" is measured from (e.g. process start).
    pub started: Instant,
    /// Seccomp filters the VM's threads install first thing (a jailed VMM's).
    pub filters: Option<ThreadFilters>,
}

impl StartOptions {
    /// No filters, measuring from `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            filters: None,
        }
    }
}

fn cmdline_err(e: linux_loader::cmdline::Error) -> BuildError {
    BuildError::Cmdline(e.to_string())
}

/// The kernel command line for `config` before device entries are added.
pub fn base_cmdline(config: &VmConfig) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(cmdline_err)?;
    cmdline.insert_str(DEFAULT_CMDLINE).map_err(cmdline_err)?;
    if !config.verbose_kernel {
        cmdline.insert_str("quiet").map_err(cmdline_err)?;
    }
    Ok(cmdline)
}

fn console_out(
    console: &Console,
    file: Option<File>,
    limit: u64,
    counters: &Arc<VmCounters>,
) -> Result<ConsoleOut, BuildError> {
    Ok(match (console, file) {
        (Console::File(path), Some(file)) => {
            let out = CappedFile::new(file, limit, counters.clone())
                .map_err(|e| BuildError::ConsoleFile(path.clone(), e))?;
            Box::new(out)
        }
        (Console::Stdout, _) => Box::new(std::io::stdout()),
        _ => Box::new(std::io::sink()),
    })
}

struct VirtioSlots<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemory,
    bus: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    next: usize,
}

impl VirtioSlots<'_> {
    fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<Mutex<MmioTransport>>, BuildError> {
        let (addr, irq) = layout::virtio_slot(self.next).ok_or(BuildError::Config(
            ConfigError::TooManyDevices(self.next + 1, layout::VIRTIO_MMIO_SLOTS),
        ))?;
        self.next += 1;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::Io("creating irqfd", e))?;
        let transport = MmioTransport::new(device, self.mem.clone(), irqfd)?;
        self.vm.register_irqfd(transport.interrupt().irqfd(), irq)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_mmio_ioevent(evt, addr + REG_QUEUE_NOTIFY, i as u32)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.bus.insert(
            transport.clone() as Arc<Mutex<dyn BusDevice>>,
            addr,
            layout::MMIO_DEVICE_SIZE,
        )?;
        self.cmdline
            .add_virtio_mmio_device(layout::MMIO_DEVICE_SIZE, GuestAddress(addr), irq, None)
            .map_err(cmdline_err)?;
        Ok(transport)
    }
}

/// Builds the VM `config` describes from its opened `files` and starts its vCPUs and event loop;
/// metrics measure from `opts.started`, each thread installs its `opts.filters` first.
pub fn build(
    config: &VmConfig,
    files: HostFiles,
    opts: &StartOptions,
) -> Result<RunningVm, BuildError> {
    config.check_limits()?;
    let started = opts.started;
    let HostFiles {
        mut kernel,
        mut initrd,
        disks: disk_files,
        console,
        tap,
    } = files;

    let vm = Vm::new()?;
    // `ram` is what the guest boots with (its memory map); `mem` adds the region a virtio-mem
    // device plugs from later, which KVM and the devices know from the start.
    let ram = create_guest_memory(u64::from(config.mem_mib) << 20)?;
    let hotplug = match config.hotplug_bytes() {
        0 => None,
        size => Some(
            HotplugRegion::after_ram(ram.last_addr().raw_value() + 1, size)
                .map_err(|e| BuildError::Hotplug(e.to_string()))?,
        ),
    };
    let mem = match &hotplug {
        Some(r) => with_hotplug_region(&ram, r.addr, r.size)?,
        None => ram.clone(),
    };
    vm.map_memory(&mem)?;

    let exit = Arc::new(ExitSignal::new().map_err(|e| BuildError::Io("creating exit eventfd", e))?);
    let counters = Arc::new(VmCounters::new(started));

    // Legacy devices.
    let mut pio = Bus::new();
    let serial_irq =
        EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::Io("creating serial irqfd", e))?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
    let serial = SerialDevice::new(
        IrqTrigger(serial_irq),
        console_out(&config.console, console, config.console_limit, &counters)?,
        exit.clone(),
    );
    pio.insert(
        Arc::new(Mutex::new(serial)),
        u64::from(layout::SERIAL_PORT),
        8,
    )?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(layout::I8042_PORT),
        5,
    )?;
    pio.insert(
        Arc::new(Mutex::new(ResetControl::new(exit.clone()))),
        u64::from(layout::RESET_CONTROL_PORT),
        1,
    )?;

    // Virtio devices.
    let mut cmdline = base_cmdline(config)?;
    let mut mmio = Bus::new();
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut disks = Vec::new();
    let mut memory = None;
    {
        let mut slots = VirtioSlots {
            vm: &vm,
            mem: &mem,
            bus: &mut mmio,
            cmdline: &mut cmdline,
            next: 0,
        };
        for file in disk_files {
            let block = Arc::new(Mutex::new(Block::new(file)?));
            let transport = slots.attach(block.clone())?;
            subscribers.push(block.clone());
            disks.push(DiskSlot { block, transport });
        }
        if let (Some(net), Some(tap)) = (&config.net, tap) {
            let dev =
                Net::with_tap(tap, net.mac).map_err(|e| BuildError::Net(net.tap.clone(), e))?;
            let dev = Arc::new(Mutex::new(dev));
            slots.attach(dev.clone())?;
            subscribers.push(dev);
        }
        if let Some(vsock) = &config.vsock {
            let dev = Vsock::new(vsock.guest_cid, &vsock.uds_path)
                .map_err(|e| BuildError::Vsock(vsock.uds_path.clone(), e))?;
            let dev = Arc::new(Mutex::new(dev));
            slots.attach(dev.clone())?;
            subscribers.push(dev);
        }
        if let Some(region) = hotplug {
            let dev = Arc::new(Mutex::new(
                Mem::new(region).map_err(|e| BuildError::Io("creating virtio-mem", e))?,
            ));
            let transport = slots.attach(dev.clone())?;
            subscribers.push(dev.clone());
            memory = Some(MemSlot {
                mem: dev,
                transport,
            });
        }
        if config.rng {
            let rng = Arc::new(Mutex::new(
                Rng::new().map_err(|e| BuildError::Io("creating rng", e))?,
            ));
            slots.attach(rng.clone())?;
            subscribers.push(rng);
        }
    }
    if let Some(extra) = &config.cmdline {
        if !extra.trim().is_empty() {
            cmdline.insert_str(extra.trim()).map_err(cmdline_err)?;
        }
    }

    let boot = pvh::load(&ram, &mut kernel, initrd.as_mut(), &cmdline)?;
    drop((kernel, initrd));
    mptable::setup(&ram, config.vcpus)?;

    let stop = Arc::new(AtomicBool::new(false));
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        exit: exit.clone(),
        stop: stop.clone(),
        counters: counters.clone(),
        filter: opts.filters.as_ref().map(|f| f.vcpu.clone()),
    };
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for i in 0..config.vcpus {
        let vcpu = Vcpu::new(vm.create_vcpu(i)?, i, &ctx);
        vcpu.configure(&ram, vm.supported_cpuid(), vm.caps(), config.vcpus, &boot)?;
        vcpus.push(vcpu);
    }

    let event_loop = EventLoop::start(
        subscribers,
        opts.filters.as_ref().map(|f| f.event_loop.clone()),
    )?;
    let mut handles = Vec::with_capacity(vcpus.len());
    let mut running = Running {
        vcpus: Vec::new(),
        event_loop,
        stop,
        vm,
    };
    for vcpu in vcpus {
        match vcpu.start() {
            Ok(h) => handles.push(h),
            Err(e) => {
                running.vcpus = handles;
                // Errors are logged by teardown; the start error is the one to report.
                let _ = running.teardown();
                return Err(e.into());
            }
        }
    }
    running.vcpus = handles;
    tracing::debug!("VM started in {:?}", counters.since_start());
    Ok(RunningVm::new(
        running,
        exit,
        counters,
        Devices { disks, memory },
        mem,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults() {
        let k = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let mut c = VmConfig::new(k.as_path());
        let s = base_cmdline(&c)
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(s.starts_with("console=ttyS0 reboot=k panic=-1"));
        assert!(s.ends_with(" quiet"));
        c.verbose_kernel = true;
        let s = base_cmdline(&c)
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(!s.contains("quiet"));
    }

    #[test]
    fn bad_config_is_an_error_not_a_panic() {
        let mut c = VmConfig::new("/nonexistent/vmlinux");
        let e = Vmm::start(c.clone()).err().unwrap();
        assert!(e.to_string().contains("kernel /nonexistent/vmlinux"), "{e}");
        let k = vmm_sys_util::tempfile::TempFile::new().unwrap();
        c.kernel = k.as_path().into();
        c.mem_mib = 8;
        let e = Vmm::start(c).err().unwrap();
        assert!(e.to_string().contains("too little"), "{e}");
    }
}
