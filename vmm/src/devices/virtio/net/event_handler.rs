//! Event-loop wiring of the net device (see `devices::virtio::device` for the threading model).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, RXQ_INDEX, TXQ_INDEX};
use crate::devices::virtio::device::spurious_event;

/// The activate eventfd.
const TOKEN_ACTIVATE: u32 = 0;
/// The receive queue's eventfd (the guest posted buffers).
const TOKEN_RXQ: u32 = 1;
/// The transmit queue's eventfd (the guest queued frames).
const TOKEN_TXQ: u32 = 2;
/// The tap (frames for the guest).
const TOKEN_TAP: u32 = 3;

/// The queue eventfds' tokens, in queue order.
const QUEUE_TOKENS: [u32; 2] = [TOKEN_RXQ, TOKEN_TXQ];

impl Net {
    /// Registers the tap, once the device's queue eventfds were (`registered`).
    fn register_tap(&mut self, ops: &mut EventOps, registered: bool) {
        if !registered {
            return;
        }
        match ops.add(Events::with_data(&self.tap, TOKEN_TAP, EventSet::IN)) {
            Ok(()) => self.tap_rx_armed = true,
            Err(e) => tracing::error!("net: registering tap: {e:?}"),
        }
    }

    /// Watch the tap only while a frame read from it has somewhere to go, so that a guest
    /// without rx buffers doesn't turn level-triggered EPOLLIN into a busy loop.
    fn sync_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wants_tap_rx();
        if want == self.tap_rx_armed || !self.lifecycle.is_activated() {
            return;
        }
        let set = if want {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        match ops.modify(Events::with_data(&self.tap, TOKEN_TAP, set)) {
            Ok(()) => self.tap_rx_armed = want,
            Err(e) => tracing::error!("net: updating tap interest: {e:?}"),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let registered = self
            .lifecycle
            .init_events(ops, TOKEN_ACTIVATE, &QUEUE_TOKENS, "net");
        self.register_tap(ops, registered);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                let registered = self.lifecycle.on_activate_event(ops, &QUEUE_TOKENS, "net");
                self.register_tap(ops, registered);
                // Frames may already be queued on the tap.
                self.process_rx();
            }
            TOKEN_RXQ => {
                self.lifecycle.read_queue_event(RXQ_INDEX);
                self.process_rx();
            }
            TOKEN_TXQ => {
                self.lifecycle.read_queue_event(TXQ_INDEX);
                self.process_tx();
            }
            TOKEN_TAP => self.process_rx(),
            token => spurious_event("net", token),
        }
        self.sync_tap_interest(ops);
    }
}
