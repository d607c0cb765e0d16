use super::device::*;
use super::request::*;
use crate::devices::virtio::test_utils::{activate_context, within, Desc, Guest, MEM_SIZE};
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use vm_memory::GuestAddress;

/// The test region: 128 MiB at 4 GiB (64 blocks).
const BASE: u64 = 1 << 32;

fn region() -> HotplugRegion {
    HotplugRegion::after_ram(MEM_SIZE as u64, REGION_ALIGN).unwrap()
}

struct Dev {
    mem: Mem,
    vq: Guest,
    irq: std::sync::Arc<crate::devices::virtio::Interrupt>,
}

fn dev() -> Dev {
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(0), MEM_SIZE),
        (GuestAddress(BASE), REGION_ALIGN as usize),
    ])
    .unwrap();
    let (vq, queues) = Guest::on(mem.clone(), 1, 16);
    let mut dev = Mem::new(region()).unwrap();
    let (ctx, _evts, irq) = activate_context(&mem, queues).unwrap();
    dev.activate(ctx).unwrap();
    Dev { mem: dev, vq, irq }
}

impl Dev {
    /// Sends one request; returns (used length, response type, state).
    fn req(&mut self, ty: u16, addr: u64, nb: u16) -> (u32, u16, u16) {
        let r = self.vq.alloc(REQ_SIZE as u32);
        self.vq.write(r, &encode(ty, addr, nb));
        let w = self.vq.alloc(RESP_SIZE as u32);
        self.vq.add_chain(
            0,
            &[(r, REQ_SIZE as u32, false), (w, RESP_SIZE as u32, true)],
        );
        self.mem.process_queue();
        let used = self.vq.take_used(0);
        assert_eq!(used.len(), 1);
        let b = self.vq.read(w, RESP_SIZE);
        (
            used[0].1,
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[8], b[9]]),
        )
    }

    fn config_u64(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.mem.read_config(at, &mut b);
        u64::from_le_bytes(b)
    }
}

#[test]
fn the_region_sits_past_ram_and_the_hole() {
    assert_eq!(
        region(),
        HotplugRegion {
            addr: BASE,
            size: 128 << 20
        }
    );
    // RAM reaching past 4 GiB: the next 1 GiB boundary after it.
    let r = HotplugRegion::after_ram((1 << 32) + (1 << 20), 256 << 20).unwrap();
    assert_eq!(r.addr, 5 << 30);
    assert!(HotplugRegion::after_ram(0, 0).is_err());
    assert!(HotplugRegion::after_ram(0, 100 << 20).is_err());
    assert!(HotplugRegion::after_ram(u64::MAX - 5, REGION_ALIGN).is_err());
    assert!(HotplugRegion::after_ram(0, 1 << 41).is_err());
}

#[test]
fn config_space_shows_the_region_and_the_sizes() {
    let mut d = dev();
    assert_eq!(d.config_u64(0), BLOCK_SIZE);
    assert_eq!(d.config_u64(16), BASE);
    assert_eq!(d.config_u64(24), 128 << 20);
    assert_eq!(d.config_u64(32), 128 << 20);
    assert_eq!(
        d.mem.set_requested_size(3 << 20),
        Ok(4 << 20),
        "whole blocks"
    );
    assert_eq!(d.config_u64(48), 4 << 20);
    assert!(d.mem.set_requested_size(129 << 20).is_err());
    assert!(d.mem.set_requested_size(u64::MAX).is_err());
    assert_eq!(
        d.mem.requested_size(),
        4 << 20,
        "a refused size changes nothing"
    );
    assert_ne!(
        d.mem.avail_features() & (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE),
        0
    );
}

#[test]
fn plug_up_to_the_requested_size_then_nack() {
    let mut d = dev();
    assert_eq!(
        d.req(REQ_PLUG, BASE, 1),
        (RESP_SIZE as u32, RESP_NACK, 0),
        "nothing requested"
    );
    d.mem.set_requested_size(4 * BLOCK_SIZE).unwrap();
    assert_eq!(d.req(REQ_PLUG, BASE, 3).1, RESP_ACK);
    assert_eq!(d.mem.plugged_size(), 3 * BLOCK_SIZE);
    assert_eq!(d.config_u64(40), 3 * BLOCK_SIZE);
    assert_eq!(
        d.req(REQ_PLUG, BASE + 3 * BLOCK_SIZE, 2).1,
        RESP_NACK,
        "past requested"
    );
    assert_eq!(
        d.req(REQ_PLUG, BASE + 2 * BLOCK_SIZE, 1).1,
        RESP_ERROR,
        "already plugged"
    );
    assert_eq!(d.req(REQ_PLUG, BASE + 3 * BLOCK_SIZE, 1).1, RESP_ACK);
    assert_eq!(d.mem.plugged_size(), 4 * BLOCK_SIZE);
    assert!(d.irq.status() != 0, "used-ring interrupt");
}

#[test]
fn bad_ranges_are_errors() {
    let mut d = dev();
    d.mem.set_requested_size(128 << 20).unwrap();
    for (addr, nb) in [
        (BASE, 0),
        (BASE + 4096, 1),
        (BASE - BLOCK_SIZE, 1),
        (BASE + 63 * BLOCK_SIZE, 2),
        (BASE + (128 << 20), 1),
        (0, 1),
        (u64::MAX - 4095, u16::MAX),
    ] {
        for ty in [REQ_PLUG, REQ_UNPLUG, REQ_STATE] {
            assert_eq!(
                d.req(ty, addr, nb).1,
                RESP_ERROR,
                "type {ty} at {addr:#x} × {nb}"
            );
        }
    }
    assert_eq!(d.req(7, BASE, 1).1, RESP_ERROR, "unknown type");
    assert_eq!(d.mem.plugged_size(), 0);
    assert_eq!(
        d.req(REQ_PLUG, BASE + 63 * BLOCK_SIZE, 1).1,
        RESP_ACK,
        "the last block"
    );
}

#[test]
fn unplug_gives_the_memory_back_and_state_tells_it() {
    let mut d = dev();
    d.mem.set_requested_size(8 * BLOCK_SIZE).unwrap();
    assert_eq!(d.req(REQ_PLUG, BASE, 4).1, RESP_ACK);
    let data = BASE + BLOCK_SIZE + 100;
    d.vq.write(data, b"guest data");
    assert_eq!(
        d.req(REQ_STATE, BASE, 4),
        (RESP_SIZE as u32, RESP_ACK, STATE_PLUGGED)
    );
    assert_eq!(d.req(REQ_STATE, BASE, 5).2, STATE_MIXED);
    assert_eq!(
        d.req(REQ_STATE, BASE + 4 * BLOCK_SIZE, 4).2,
        STATE_UNPLUGGED
    );
    assert_eq!(
        d.req(REQ_UNPLUG, BASE, 5).1,
        RESP_ERROR,
        "one of them is not plugged"
    );
    assert_eq!(d.req(REQ_UNPLUG, BASE + BLOCK_SIZE, 1).1, RESP_ACK);
    assert_eq!(d.vq.read(data, 10), vec![0; 10], "discarded");
    assert_eq!(d.mem.plugged_size(), 3 * BLOCK_SIZE);
    assert_eq!(d.req(REQ_STATE, BASE, 4).2, STATE_MIXED);
    assert_eq!(d.req(REQ_UNPLUG_ALL, 0, 0).1, RESP_ACK);
    assert_eq!(d.mem.plugged_size(), 0);
    assert_eq!(d.req(REQ_STATE, BASE, 64).2, STATE_UNPLUGGED);
}

#[test]
fn a_chain_without_room_for_the_answer_changes_nothing() {
    let mut d = dev();
    d.mem.set_requested_size(BLOCK_SIZE).unwrap();
    let r = d.vq.alloc(REQ_SIZE as u32);
    d.vq.write(r, &encode(REQ_PLUG, BASE, 1));
    let w = d.vq.alloc(4);
    d.vq.add_chain(0, &[(r, REQ_SIZE as u32, false), (w, 4, true)]);
    // Only a request, no writable part at all.
    d.vq.add_chain(0, &[(r, REQ_SIZE as u32, false)]);
    d.mem.process_queue();
    let used = d.vq.take_used(0);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0]);
    assert_eq!(d.mem.plugged_size(), 0);
    // A request split over two descriptors still counts; a short one is an error.
    let a = d.vq.alloc(8);
    let b = d.vq.alloc(16);
    let req = encode(REQ_PLUG, BASE, 1);
    d.vq.write(a, &req[..8]);
    d.vq.write(b, &req[8..]);
    let w = d.vq.alloc(RESP_SIZE as u32);
    d.vq.add_chain(
        0,
        &[(a, 8, false), (b, 16, false), (w, RESP_SIZE as u32, true)],
    );
    d.mem.process_queue();
    assert_eq!(d.vq.read(w, 2), RESP_ACK.to_le_bytes());
    let w2 = d.vq.alloc(RESP_SIZE as u32);
    d.vq.add_chain(0, &[(a, 8, false), (w2, RESP_SIZE as u32, true)]);
    d.mem.process_queue();
    assert_eq!(d.vq.read(w2, 2), RESP_ERROR.to_le_bytes());
    assert_eq!(d.mem.plugged_size(), BLOCK_SIZE);
}

#[test]
fn descriptors_outside_memory_and_a_broken_ring_never_hang() {
    let mut d = dev();
    // A request in the gap between RAM and the region, and an answer there too.
    let gap = 0x8000_0000u64;
    d.vq.add_descs(0, &[Desc::new(gap, REQ_SIZE as u32, 0, 0)]);
    d.mem.process_queue();
    assert_eq!(d.vq.take_used(0)[0].1, 0);
    d.vq.set_avail_idx(0, d.vq.avail_idx(0).wrapping_add(40));
    let irq = d.irq.clone();
    let mut mem = d.mem;
    let plugged = within(std::time::Duration::from_secs(5), move || {
        mem.process_queue();
        mem.plugged_size()
    });
    assert_eq!(plugged, 0);
    assert!(irq.needs_reset());
}

#[test]
fn plugged_memory_survives_a_reset() {
    let mut d = dev();
    d.mem.set_requested_size(BLOCK_SIZE).unwrap();
    assert_eq!(d.req(REQ_PLUG, BASE, 1).1, RESP_ACK);
    assert!(d.mem.reset());
    assert_eq!(d.mem.plugged_size(), BLOCK_SIZE);
    assert_eq!(d.config_u64(40), BLOCK_SIZE);
}
