//! The virtio-mmio register map (virtio 1.2 §4.2.2): offsets in a device's window, and the
//! fixed values the identity registers read.

/// MagicValue's value: "virt".
pub(super) const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (version 2) transport.
pub(super) const MMIO_VERSION: u32 = 2;
pub(super) const VENDOR_ID: u32 = 0;

/// MagicValue (R): "virt".
pub const REG_MAGIC: u64 = 0x000;
/// Version (R): 2, the modern transport.
pub const REG_VERSION: u64 = 0x004;
/// DeviceID (R): the device's VIRTIO_ID_*.
pub const REG_DEVICE_ID: u64 = 0x008;
/// VendorID (R).
pub const REG_VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures (R): 32 feature bits, the half DeviceFeaturesSel picks.
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel (W).
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures (W): 32 acked feature bits, the half DriverFeaturesSel picks.
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel (W).
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel (W): the queue the Queue* registers below refer to.
pub const REG_QUEUE_SEL: u64 = 0x030;
/// QueueNumMax (R): the selected queue's maximum size.
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum (W): the selected queue's size.
pub const REG_QUEUE_NUM: u64 = 0x038;
/// QueueReady (RW).
pub const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify (W): the queue index with buffers for the device (normally an ioeventfd).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus (R): the VRING and CONFIG bits.
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK (W).
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// Status (RW): the device status bits; 0 resets.
pub const REG_STATUS: u64 = 0x070;
/// QueueDescLow (W): descriptor table address, low half.
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh (W).
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (W): avail ring address, low half.
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDriverHigh (W).
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow (W): used ring address, low half.
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// QueueDeviceHigh (W).
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// ConfigGeneration (R): changes when the config space does.
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device's config space.
pub const REG_CONFIG: u64 = 0x100;
