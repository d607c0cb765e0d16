//! Can this host's `/dev/kvm` run a Linux guest to user space?
//!
//! A real hardware KVM (kvm_intel / kvm_amd on a CPU that shows vmx / svm) can. `kvm_pvm`, the
//! software nested hypervisor on our development and CI machines, can't: a stock guest's first
//! user-space syscall faults. There is no cheap, safe way to find that out by booting, so the probe
//! reads what the kernel tells about its KVM module and the CPU.

use std::fmt;
use std::fs;
use std::path::Path;

/// Where VM tests run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host KVM is real: run directly.
    Direct {
        /// The host's KVM module (`kvm_intel`, `kvm_amd`).
        module: &'static str,
    },
    /// Run inside the test bed, for this reason.
    Testbed {
        /// Why the host KVM won't do, in words.
        reason: String,
    },
}

impl Verdict {
    /// Whether VM tests run on the host itself.
    pub fn is_direct(&self) -> bool {
        matches!(self, Verdict::Direct { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Direct { module } => write!(f, "direct: /dev/kvm is hardware KVM ({module})"),
            Verdict::Testbed { reason } => write!(f, "testbed: {reason}"),
        }
    }
}

/// What the probe reads, gathered so the decision is a pure function (and testable).
#[derive(Debug, Default, Clone)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// The `kvm_intel` module is loaded.
    pub kvm_intel: bool,
    /// The `kvm_amd` module is loaded.
    pub kvm_amd: bool,
    /// The `kvm_pvm` module (software nested KVM) is loaded.
    pub kvm_pvm: bool,
    /// The CPU shows `vmx` (Intel VT-x).
    pub cpu_vmx: bool,
    /// The CPU shows `svm` (AMD-V).
    pub cpu_svm: bool,
}

impl HostFacts {
    /// Reads `/dev`, `/sys/module` and `/proc/cpuinfo`.
    pub fn read() -> Self {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        let flags = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("flags"))
                    .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            })
            .unwrap_or_default();
        HostFacts {
            dev_kvm: Path::new("/dev/kvm").exists(),
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            kvm_pvm: module("kvm_pvm"),
            cpu_vmx: flags.iter().any(|f| f == "vmx"),
            cpu_svm: flags.iter().any(|f| f == "svm"),
        }
    }
}

/// Decides from the facts.
pub fn decide(f: &HostFacts) -> Verdict {
    if !f.dev_kvm {
        return Verdict::Testbed {
            reason: "no /dev/kvm on this host".into(),
        };
    }
    if f.kvm_pvm {
        return Verdict::Testbed {
            reason: "/dev/kvm is kvm_pvm (software nested hypervisor; Linux guests can't run user space on it)"
                .into(),
        };
    }
    if f.kvm_intel && f.cpu_vmx {
        return Verdict::Direct {
            module: "kvm_intel",
        };
    }
    if f.kvm_amd && f.cpu_svm {
        return Verdict::Direct { module: "kvm_amd" };
    }
    Verdict::Testbed {
        reason: "/dev/kvm is not backed by kvm_intel/kvm_amd on a CPU with vmx/svm".into(),
    }
}

/// Override from the environment: `VPOD_TESTBED=always|never|auto` (default auto).
pub fn probe() -> Verdict {
    match std::env::var("VPOD_TESTBED").as_deref() {
        Ok("always") => Verdict::Testbed {
            reason: "VPOD_TESTBED=always".into(),
        },
        Ok("never") => Verdict::Direct {
            module: "VPOD_TESTBED=never",
        },
        _ => decide(&HostFacts::read()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_means_testbed() {
        let f = HostFacts {
            dev_kvm: true,
            kvm_pvm: true,
            ..Default::default()
        };
        assert!(!decide(&f).is_direct());
    }

    #[test]
    fn hardware_kvm_is_direct() {
        let intel = HostFacts {
            dev_kvm: true,
            kvm_intel: true,
            cpu_vmx: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&intel),
            Verdict::Direct {
                module: "kvm_intel"
            }
        );
        let amd = HostFacts {
            dev_kvm: true,
            kvm_amd: true,
            cpu_svm: true,
            ..Default::default()
        };
        assert_eq!(decide(&amd), Verdict::Direct { module: "kvm_amd" });
    }

    #[test]
    fn no_kvm_or_no_cpu_support_means_testbed() {
        assert!(!decide(&HostFacts::default()).is_direct());
        let f = HostFacts {
            dev_kvm: true,
            kvm_amd: true,
            ..Default::default()
        };
        assert!(!decide(&f).is_direct());
    }
}
