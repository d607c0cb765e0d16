//! x86_64: memory layout, PVH boot, CPUID, MSRs and initial register state.
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod pvh;
pub mod regs;
