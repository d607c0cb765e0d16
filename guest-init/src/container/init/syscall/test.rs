//! A [`Syscall`] that records each call and makes none (or fails the ones a
//! test asks it to).

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::Syscall;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2(PathBuf, MntFlags),
    Mknod(PathBuf, libc::dev_t),
    Chmod(PathBuf, u32),
    Symlink(String, PathBuf),
    Sethostname(String),
    Chdir(PathBuf),
    PivotRoot(PathBuf, PathBuf),
}

/// Records calls; mounts on `fail_mount_at` fail with EPERM.
#[derive(Debug, Default)]
pub struct Recording {
    calls: RefCell<Vec<Call>>,
    fail_mount_at: Option<PathBuf>,
}

impl Recording {
    /// Fails every mount on `target` with EPERM.
    pub fn failing_mount_at(target: PathBuf) -> Self {
        Recording {
            calls: RefCell::default(),
            fail_mount_at: Some(target),
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Only the mounts, as (source, target, fstype, flags).
    pub fn mounts(&self) -> Vec<(Option<String>, PathBuf, Option<String>, MsFlags)> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((source.clone(), target.clone(), fstype.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    fn push(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl Syscall for Recording {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.push(Call::Mount {
            source: source.map(str::to_owned),
            target: target.to_owned(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        });
        if self.fail_mount_at.as_deref() == Some(target) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        self.push(Call::Umount2(target.to_owned(), flags));
        Ok(())
    }

    fn mknod(&self, path: &Path, _kind: SFlag, _perm: Mode, dev: libc::dev_t) -> Result<(), Errno> {
        self.push(Call::Mknod(path.to_owned(), dev));
        Ok(())
    }

    fn chmod(&self, path: &Path, mode: Mode) -> Result<(), Errno> {
        self.push(Call::Chmod(path.to_owned(), mode.bits()));
        Ok(())
    }

    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink(target.to_owned(), link.to_owned()));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.push(Call::Sethostname(name.to_owned()));
        Ok(())
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        self.push(Call::Chdir(path.to_owned()));
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.push(Call::PivotRoot(new_root.to_owned(), put_old.to_owned()));
        Ok(())
    }
}
