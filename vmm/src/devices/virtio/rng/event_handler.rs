//! virtio-rng on the event loop: activation and reset, and queue notifications.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::{Rng, REQUEST_QUEUE};
use crate::devices::virtio::device::spurious_event;

/// The activate eventfd (activation and reset).
const TOKEN_ACTIVATE: u32 = 0;
/// The request queue's eventfd.
const TOKEN_QUEUE: u32 = 1;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.lifecycle
            .init_events(ops, TOKEN_ACTIVATE, &[TOKEN_QUEUE], "rng");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                self.lifecycle.on_activate_event(ops, &[TOKEN_QUEUE], "rng");
            }
            TOKEN_QUEUE => self.lifecycle.read_queue_event(REQUEST_QUEUE),
            token => return spurious_event("rng", token),
        }
        // Buffers may have been queued before we listened, or just now.
        self.process_queue();
    }
}
