//! Transport tests: a driver's register accesses against a fake device on the common skeleton.

use super::*;
use crate::devices::virtio::device::{
    lifecycle_field, ActivateError, Lifecycle, VIRTIO_MMIO_INT_VRING,
};
use vm_memory::GuestAddress;

/// A device on the common skeleton that records what the transport did to it.
pub struct FakeDevice {
    pub acked: u64,
    pub config: Vec<u8>,
    pub lifecycle: Lifecycle,
    pub resettable: bool,
    pub fail_activate: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | 0b101
    }
    lifecycle_field!();
    fn set_acked_features(&mut self, f: u64) {
        self.acked = f;
    }
    fn config_space(&self) -> &[u8] {
        &self.config
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = self
            .config
            .get_mut(offset as usize..offset as usize + data.len())
        {
            dst.copy_from_slice(data);
        }
    }
    fn prepare_activation(&mut self, _ctx: &mut ActivateContext) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend("nope".into()));
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.lifecycle.reset();
        self.resettable
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<FakeDevice>>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(FakeDevice {
        acked: 0,
        config: vec![1, 2, 3, 4, 5, 6, 7, 8],
        lifecycle: Lifecycle::new().unwrap(),
        resettable: true,
        fail_activate: false,
    }));
    let t = MmioTransport::new(dev.clone(), mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    (t, dev)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport) {
    w(t, REG_STATUS, S_ACK);
    w(t, REG_STATUS, S_ACK | S_DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, 0b101);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    w(t, REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
}

fn setup_queue(t: &mut MmioTransport, sel: u32, base: u64) {
    w(t, REG_QUEUE_SEL, sel);
    w(t, REG_QUEUE_NUM, 8);
    w(t, REG_QUEUE_DESC_LOW, base as u32);
    w(t, REG_QUEUE_DESC_HIGH, 0);
    w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, REG_QUEUE_READY, 1);
}

#[test]
fn identity_registers() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
    assert_eq!(r(&mut t, REG_VENDOR_ID), 0);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0b101);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 8);
    w(&mut t, REG_QUEUE_SEL, 2);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    // Wrong-sized register reads return zeros.
    let mut b = [0xffu8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn config_space() {
    let (mut t, dev) = setup();
    let mut b = [0u8; 2];
    t.read(REG_CONFIG + 2, &mut b);
    assert_eq!(b, [3, 4]);
    t.write(REG_CONFIG + 7, &[9]);
    assert_eq!(dev.lock().unwrap().config[7], 9);
    let mut b = [0xffu8; 4];
    t.read(REG_CONFIG + 6, &mut b);
    assert_eq!(b, [7, 9, 0, 0]);
    let g = r(&mut t, REG_CONFIG_GENERATION);
    t.notify_config_change().unwrap();
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), g + 1);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    w(&mut t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn full_negotiation_activates() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    assert_eq!(r(&mut t, REG_STATUS), S_ACK | S_DRIVER | S_FEATURES_OK);
    assert_eq!(dev.lock().unwrap().acked, (1 << VIRTIO_F_VERSION_1) | 0b101);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    w(
        &mut t,
        REG_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_eq!(r(&mut t, REG_STATUS) & S_DRIVER_OK, S_DRIVER_OK);
    {
        let d = dev.lock().unwrap();
        let ctx = d.lifecycle.active().unwrap();
        assert_eq!(ctx.queues.len(), 2);
        assert_eq!(ctx.queues[0].size(), 8);
        assert_eq!(ctx.queues[1].desc_table(), 0x2_0000);
        assert!(ctx.queues[0].ready());
        ctx.interrupt.trigger(VIRTIO_MMIO_INT_VRING).unwrap();
    }
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_NUM, 4);
    assert_eq!(
        dev.lock().unwrap().lifecycle.active().unwrap().queues[0].size(),
        8
    );
    assert_eq!(r(&mut t, REG_STATUS) & S_NEEDS_RESET, 0);
    // Notify fallback signals the queue's eventfd.
    w(&mut t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    w(&mut t, REG_QUEUE_NOTIFY, 7); // no such queue: ignored
                                    // Reset.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert!(!dev.lock().unwrap().lifecycle.is_activated());
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn rejects_unoffered_features_and_missing_version_1() {
    let (mut t, _) = setup();
    w(&mut t, REG_STATUS, S_ACK);
    w(&mut t, REG_STATUS, S_ACK | S_DRIVER);
    w(&mut t, REG_DRIVER_FEATURES, 0b111); // bit 1 not offered
    w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
    w(&mut t, REG_DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    w(&mut t, REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS) & S_FEATURES_OK, 0);

    let (mut t, _) = setup();
    w(&mut t, REG_STATUS, S_ACK);
    w(&mut t, REG_STATUS, S_ACK | S_DRIVER);
    w(&mut t, REG_DRIVER_FEATURES, 0b1); // legacy driver: no VERSION_1
    w(&mut t, REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS) & S_FEATURES_OK, 0);
}

#[test]
fn invalid_transitions_are_ignored() {
    let (mut t, dev) = setup();
    w(
        &mut t,
        REG_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_eq!(r(&mut t, REG_STATUS), 0);
    w(&mut t, REG_STATUS, S_ACK);
    w(&mut t, REG_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS), S_ACK);
    // Queue config before FEATURES_OK is ignored.
    setup_queue(&mut t, 0, 0x1000);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    w(&mut t, REG_STATUS, S_ACK | S_FAILED);
    assert_eq!(r(&mut t, REG_STATUS), S_ACK | S_FAILED);
    assert!(!dev.lock().unwrap().lifecycle.is_activated());
}

#[test]
fn bad_queue_sizes_fail_the_device() {
    for bad in [3u32, 0, 32, 0x1_0008] {
        let (mut t, _) = setup();
        negotiate(&mut t);
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, bad);
        assert_ne!(r(&mut t, REG_STATUS) & S_NEEDS_RESET, 0, "size {bad}");
    }
}

#[test]
fn bad_queue_address_fails_activation() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10_0000 - 0x100); // rings run past the end of guest memory
    w(
        &mut t,
        REG_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert!(!dev.lock().unwrap().lifecycle.is_activated());
    assert_ne!(r(&mut t, REG_STATUS) & S_NEEDS_RESET, 0);
    assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
}

#[test]
fn activation_error_and_unresettable_device() {
    let (mut t, dev) = setup();
    dev.lock().unwrap().fail_activate = true;
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    w(
        &mut t,
        REG_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_ne!(r(&mut t, REG_STATUS) & S_NEEDS_RESET, 0);

    let (mut t, dev) = setup();
    dev.lock().unwrap().resettable = false;
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    w(
        &mut t,
        REG_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), S_FAILED);
}

#[test]
fn guest_misuse_warns_once_per_kind() {
    use crate::devices::latch::tests::{captured_logs, count};
    let (mut t, _) = setup();
    let logs = captured_logs(|| {
        for _ in 0..100 {
            // Invalid status transition, unknown register, bad width.
            w(
                &mut t,
                REG_STATUS,
                S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            );
            w(&mut t, 0x0f0, 1);
            let _ = r(&mut t, 0x0f0);
            t.write(REG_STATUS, &[1, 0]);
        }
    });
    assert_eq!(count(&logs, "invalid status transition"), (1, 99), "{logs}");
    assert_eq!(count(&logs, "unknown register"), (1, 199), "{logs}");
    assert_eq!(count(&logs, "2-byte write"), (1, 99), "{logs}");
    // Another device's misuse is still reported.
    let (mut t2, _) = setup();
    let logs = captured_logs(|| w(&mut t2, REG_STATUS, S_ACK | S_DRIVER_OK));
    assert_eq!(count(&logs, "invalid status transition"), (1, 0), "{logs}");
}

#[test]
fn device_needs_reset_shows_in_status_until_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    let ok = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    w(&mut t, REG_STATUS, ok);
    assert_eq!(r(&mut t, REG_STATUS), ok);
    // The device (on the event loop) finds a broken ring.
    let irq = dev
        .lock()
        .unwrap()
        .lifecycle
        .active()
        .unwrap()
        .interrupt
        .clone();
    irq.set_needs_reset().unwrap();
    assert_eq!(r(&mut t, REG_STATUS), ok | S_NEEDS_RESET);
    assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
    // A driver reset clears it, and the device can be brought up again.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert!(!irq.needs_reset());
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    w(&mut t, REG_STATUS, ok);
    assert_eq!(r(&mut t, REG_STATUS), ok);
}
