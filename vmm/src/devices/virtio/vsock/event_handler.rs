//! Event-loop wiring of the vsock device (see `devices::virtio::device` for the threading model).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, EVQ_INDEX, RXQ_INDEX, TXQ_INDEX};

const TOKEN_ACTIVATE: u32 = 0;
/// Queue eventfds use `TOKEN_QUEUE_BASE + queue index`.
const TOKEN_QUEUE_BASE: u32 = 1;
const TOKEN_RXQ: u32 = TOKEN_QUEUE_BASE + RXQ_INDEX as u32;
const TOKEN_TXQ: u32 = TOKEN_QUEUE_BASE + TXQ_INDEX as u32;
const TOKEN_EVQ: u32 = TOKEN_QUEUE_BASE + EVQ_INDEX as u32;

impl Vsock {
    fn handle_activate(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        let Some(active) = self.pending_activation.take() else {
            return;
        };
        for (i, evt) in active.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(
                evt,
                TOKEN_QUEUE_BASE + i as u32,
                EventSet::IN,
            )) {
                tracing::error!("vsock: registering queue {i} eventfd: {e:?}");
            }
        }
        self.active = Some(active);
        // The listener and any connections are registered by the sync below.
    }

    fn read_queue_evt(&self, index: usize) {
        if let Some(active) = &self.active {
            let _ = active.queue_events[index].read();
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!("vsock: registering activate eventfd: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        match data {
            TOKEN_ACTIVATE => self.handle_activate(ops),
            TOKEN_RXQ => self.read_queue_evt(RXQ_INDEX),
            TOKEN_TXQ => {
                self.read_queue_evt(TXQ_INDEX);
                self.process_tx();
            }
            // The event queue only carries TRANSPORT_RESET, which we never send.
            TOKEN_EVQ => self.read_queue_evt(EVQ_INDEX),
            _ if self.active.is_some() => {
                self.muxer
                    .handle_event(data, events.fd(), events.event_set())
            }
            _ => {}
        }
        // Whatever happened may have produced packets for the guest (responses, data, RSTs).
        self.process_rx();
        if self.active.is_some() {
            self.muxer.sync_epoll(ops);
        }
    }
}
