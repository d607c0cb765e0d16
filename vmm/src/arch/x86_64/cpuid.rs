//! Guest CPUID: what KVM supports, adjusted per vCPU (APIC id, topology), with the hypervisor bit
//! and the KVM signature leaf so the guest finds kvmclock and paravirt features.
//!
//! Topology: one socket, `vcpus` cores, one thread per core, APIC id = vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The host CPU's vendor (some leaves differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine).
    Amd,
    /// Anyone else.
    Other,
}

/// Why the guest's CPUID could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The CPUID list is full.
    #[error("adding a CPUID leaf: {0:?}")]
    Push(vmm_sys_util::fam::Error),
}

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_INTEL: u32 = 4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_CACHE_AMD: u32 = 0x8000_001d;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;

// "KVMKVMKVM\0\0\0"
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Vendor from leaf 0's "GenuineIntel" / "AuthenticAMD" (Hygon behaves like AMD).
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(e) = cpuid.as_slice().iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&e.edx.to_le_bytes());
    id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to hold `n` distinct ids.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// What KVM can do beyond its supported-CPUID list.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmCaps {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC emulates TSC-deadline mode, but KVM_GET_SUPPORTED_CPUID
    /// doesn't say so; without it the guest must calibrate the LAPIC timer (and may give up on one-shot mode).
    pub tsc_deadline: bool,
}

/// Adjusts KVM's supported CPUID for vCPU `index` of `count`.
pub fn for_vcpu(
    supported: &CpuId,
    index: u8,
    count: u8,
    caps: KvmCaps,
) -> Result<CpuId, CpuidError> {
    let mut cpuid = supported.clone();
    let vendor = vendor(&cpuid);
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    let core_bits = id_bits(count);

    let mut has_signature = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if caps.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_INTEL if vendor == Vendor::Intel && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            // No virtual PMU: the guest's perf code would otherwise poke MSRs we don't virtualize.
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    // Core level: all vCPUs.
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_KVM_SIGNATURE => {
                has_signature = true;
                e.eax = e.eax.max(LEAF_KVM_FEATURES);
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            LEAF_EXT_FEATURES if vendor == Vendor::Amd => {
                if count > 1 {
                    e.ecx |= ECX_AMD_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_AMD_CMP_LEGACY;
                }
            }
            LEAF_EXT_ADDR_SIZES if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | ((core_bits & 0xf) << 12) | ((count - 1) & 0xff);
            }
            LEAF_CACHE_AMD if vendor == Vendor::Amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            LEAF_EXT_APIC_ID if vendor == Vendor::Amd => {
                e.eax = apic_id;
                // Core id in [7:0], threads per core - 1 in [15:8].
                e.ebx = apic_id & 0xff;
                // One node.
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
    if !has_signature {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: LEAF_KVM_SIGNATURE,
                eax: LEAF_KVM_FEATURES,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            })
            .map_err(CpuidError::Push)?;
    }
    Ok(cpuid)
}

#[cfg(test)]
fn is_indexed(function: u32) -> bool {
    matches!(function, 4 | 7 | 0xb | 0xd | 0x1f | 0x8000_001d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        let flags = if is_indexed(function) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        };
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn base(vendor: &[u8; 12]) -> CpuId {
        let r = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        CpuId::from_entries(&[
            entry(0, 0, 0x1f, r(0), r(8), r(4)),
            entry(1, 0, 0x806f8, 0x0008_0800, 0, 0),
            entry(4, 0, 0x121, 0, 0, 0),
            entry(4, 1, 0x163, 0, 0, 0),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0, 0),
            entry(0x8000_001e, 0, 0, 0, 0, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn intel_topology() {
        let c = base(b"GenuineIntel");
        assert_eq!(vendor(&c), Vendor::Intel);
        let v = for_vcpu(&c, 2, 4, KvmCaps { tsc_deadline: true }).unwrap();
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&v, 4, 0).eax >> 26, 3);
        assert_eq!((find(&v, 4, 1).eax >> 14) & 0xfff, 3); // L3 shared by all
        let t1 = find(&v, 0xb, 1);
        assert_eq!((t1.eax, t1.ebx, t1.ecx, t1.edx), (2, 4, 0x201, 2));
        let sig = find(&v, LEAF_KVM_SIGNATURE, 0);
        assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
    }

    #[test]
    fn amd_topology() {
        let c = base(b"AuthenticAMD");
        assert_eq!(vendor(&c), Vendor::Amd);
        let v = for_vcpu(&c, 3, 8, KvmCaps::default()).unwrap();
        assert_eq!(find(&v, 0x8000_001e, 0).eax, 3);
        assert_eq!(find(&v, 0x8000_0008, 0).ecx & 0xff, 7);
        assert_eq!((find(&v, 0x8000_0008, 0).ecx >> 12) & 0xf, 3);
        assert_ne!(find(&v, 0x8000_0001, 0).ecx & ECX_AMD_CMP_LEGACY, 0);
        assert_eq!(find(&v, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn bits() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(8), 3);
        assert_eq!(id_bits(9), 4);
    }
}
