//! Event-loop wiring of the net device (see `devices::virtio::device` for the threading model).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, RXQ_INDEX, TXQ_INDEX};

const TOKEN_ACTIVATE: u32 = 0;
const TOKEN_RXQ: u32 = 1;
const TOKEN_TXQ: u32 = 2;
const TOKEN_TAP: u32 = 3;

impl Net {
    fn handle_activate(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        let Some(active) = self.pending_activation.take() else {
            return;
        };
        for (evt, token) in active.queue_events.iter().zip([TOKEN_RXQ, TOKEN_TXQ]) {
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                tracing::error!("net: registering queue eventfd: {e:?}");
            }
        }
        match ops.add(Events::with_data(&self.tap, TOKEN_TAP, EventSet::IN)) {
            Ok(()) => self.tap_rx_armed = true,
            Err(e) => tracing::error!("net: registering tap: {e:?}"),
        }
        self.active = Some(active);
    }

    fn read_queue_evt(&self, index: usize) {
        if let Some(active) = &self.active {
            let _ = active.queue_events[index].read();
        }
    }

    /// Watch the tap only while a frame read from it has somewhere to go, so that a guest
    /// without rx buffers doesn't turn level-triggered EPOLLIN into a busy loop.
    fn sync_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wants_tap_rx();
        if want == self.tap_rx_armed || self.active.is_none() {
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
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!("net: registering activate eventfd: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                self.handle_activate(ops);
                // Frames may already be queued on the tap.
                self.process_rx();
            }
            TOKEN_RXQ => {
                self.read_queue_evt(RXQ_INDEX);
                self.process_rx();
            }
            TOKEN_TXQ => {
                self.read_queue_evt(TXQ_INDEX);
                self.process_tx();
            }
            TOKEN_TAP => self.process_rx(),
            data => tracing::warn!(data, "net: unexpected event token"),
        }
        self.sync_tap_interest(ops);
    }
}
