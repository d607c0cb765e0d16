//! virtio-blk on the event loop: activation and reset (the queue eventfd in or out of epoll) and
//! queue notifications.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::{Block, REQUEST_QUEUE};
use crate::devices::virtio::device::spurious_event;

/// The activate eventfd (activation and reset).
const TOKEN_ACTIVATE: u32 = 0;
/// The request queue's eventfd.
const TOKEN_QUEUE: u32 = 1;

impl Block {
    /// Registers the queue eventfd once the device is activated (once per activation).
    fn register_runtime_events(&mut self, ops: &mut EventOps) {
        self.lifecycle
            .register_queue_events(ops, &[TOKEN_QUEUE], "block");
    }

    fn process_activate_event(&mut self, ops: &mut EventOps) {
        self.lifecycle.on_activate_event(ops);
        self.register_runtime_events(ops);
        // Requests may have been queued before we listened.
        self.process_queue();
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.lifecycle
            .register_activate_event(ops, TOKEN_ACTIVATE, "block");
        // Subscribed after its activation (the VMM subscribes devices before the guest runs).
        self.register_runtime_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => self.process_activate_event(ops),
            TOKEN_QUEUE => {
                self.lifecycle.read_queue_event(REQUEST_QUEUE);
                self.process_queue();
            }
            token => spurious_event("block", token),
        }
    }
}
