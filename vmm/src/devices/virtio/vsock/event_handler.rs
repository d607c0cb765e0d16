//! Event-loop wiring of the vsock device (see `devices::virtio::device` for the threading model).

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::{Vsock, EVQ_INDEX, RXQ_INDEX, TXQ_INDEX};
use super::muxer::{TOKEN_CONN, TOKEN_HOST_PENDING, TOKEN_LISTENER};
use crate::devices::virtio::device::spurious_event;

/// The activate eventfd.
const TOKEN_ACTIVATE: u32 = 0;
/// The receive queue's eventfd (the guest posted buffers).
const TOKEN_RXQ: u32 = 1;
/// The transmit queue's eventfd (the guest queued packets).
const TOKEN_TXQ: u32 = 2;
/// The event queue's eventfd.
const TOKEN_EVQ: u32 = 3;
// The muxer's fds (listener, host peers, connections) use its own tokens, 0x10 and up.

/// The queue eventfds' tokens, in queue order.
const QUEUE_TOKENS: [u32; 3] = [TOKEN_RXQ, TOKEN_TXQ, TOKEN_EVQ];

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        // The listener and any connections are registered by the muxer's sync.
        self.lifecycle
            .init_events(ops, TOKEN_ACTIVATE, &QUEUE_TOKENS, "vsock");
        if self.lifecycle.is_activated() {
            self.muxer.sync_epoll(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            TOKEN_ACTIVATE => {
                self.lifecycle
                    .on_activate_event(ops, &QUEUE_TOKENS, "vsock");
            }
            TOKEN_RXQ => self.lifecycle.read_queue_event(RXQ_INDEX),
            TOKEN_TXQ => {
                self.lifecycle.read_queue_event(TXQ_INDEX);
                self.process_tx();
            }
            // The event queue only carries TRANSPORT_RESET, which we never send.
            TOKEN_EVQ => self.lifecycle.read_queue_event(EVQ_INDEX),
            TOKEN_LISTENER | TOKEN_HOST_PENDING | TOKEN_CONN if self.lifecycle.is_activated() => {
                self.muxer
                    .handle_event(token, events.fd(), events.event_set())
            }
            token => spurious_event("vsock", token),
        }
        // Whatever happened may have produced packets for the guest (responses, data, RSTs).
        self.process_rx();
        if self.lifecycle.is_activated() {
            self.muxer.sync_epoll(ops);
        }
    }
}
