//! What a VM takes from the host's file tree, opened in one place before anything is built: the
//! kernel, the initrd, the disks, the console file and the tap. A jailed VMM opens them while it
//! can still see the host (root, host mount namespace, the pod's netns) and then enters its
//! jail; the builder only ever uses the open files, so the jail's root can stay empty of them.
//! The vsock socket is not here: the VMM binds it where its config says, after the jail.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};

use crate::arch::x86_64::pvh;
use crate::builder::BuildError;
use crate::config::{Console, VmConfig};
use crate::devices::virtio::block::DiskFile;
use crate::devices::virtio::net::Tap;

/// The open host files of one VM, in config order.
#[derive(Debug)]
pub struct HostFiles {
    /// The vmlinux.
    pub kernel: File,
    /// The initramfs.
    pub initrd: Option<File>,
    /// One per [`VmConfig::disks`] entry.
    pub disks: Vec<DiskFile>,
    /// The console file of [`Console::File`].
    pub console: Option<File>,
    /// The tap of [`VmConfig::net`] (created in the calling thread's network namespace).
    pub tap: Option<Tap>,
}

impl HostFiles {
    /// Opens everything `config` names (after validating it).
    pub fn open(config: &VmConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let kernel = pvh::open_kernel(&config.kernel)?;
        let initrd = config.initrd.as_deref().map(pvh::open_initrd).transpose()?;
        let disks = config
            .disks
            .iter()
            .map(|d| DiskFile::open(&d.path, d.read_only, d.id.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let console = match &config.console {
            Console::File(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| BuildError::ConsoleFile(path.clone(), e))?,
            ),
            Console::Off | Console::Stdout => None,
        };
        let tap = config
            .net
            .as_ref()
            .map(|n| Tap::open(&n.tap).map_err(|e| BuildError::Net(n.tap.clone(), e.into())))
            .transpose()?;
        Ok(Self {
            kernel,
            initrd,
            disks,
            console,
            tap,
        })
    }

    /// Every descriptor held, for a jail's keep-list.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.kernel.as_raw_fd()];
        fds.extend(self.initrd.as_ref().map(|f| f.as_raw_fd()));
        fds.extend(self.disks.iter().map(|d| d.file.as_raw_fd()));
        fds.extend(self.console.as_ref().map(|f| f.as_raw_fd()));
        fds.extend(self.tap.as_ref().map(|t| t.as_raw_fd()));
        fds
    }
}
