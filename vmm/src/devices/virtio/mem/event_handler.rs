//! virtio-mem on the event loop: activation and reset, and request notifications.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::{Mem, REQUEST_QUEUE};
use crate::devices::virtio::device::spurious_event;

/// The activate eventfd (activation and reset).
const TOKEN_ACTIVATE: u32 = 0;
/// The request queue's eventfd.
const TOKEN_QUEUE: u32 = 1;

impl MutEventSubscriber for Mem {
    fn init(&mut self, ops: &mut EventOps) {
        self.lifecycle
            .init_events(ops, TOKEN_ACTIVATE, &[TOKEN_QUEUE], "virtio-mem");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                self.lifecycle
                    .on_activate_event(ops, &[TOKEN_QUEUE], "virtio-mem");
            }
            TOKEN_QUEUE => self.lifecycle.read_queue_event(REQUEST_QUEUE),
            token => return spurious_event("virtio-mem", token),
        }
        self.process_queue();
    }
}
