//! virtio-rng on the event loop.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Rng;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("rng: registering activate event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == std::os::fd::AsRawFd::as_raw_fd(&self.activate_evt) {
            let _ = self.activate_evt.read();
            for evt in self.retired_evts.drain(..) {
                let _ = ops.remove(Events::empty(&evt));
            }
            if let Some(active) = &self.active {
                if let Err(e) = ops.add(Events::new(&active.queue_evt, EventSet::IN)) {
                    tracing::error!("rng: registering queue event: {e}");
                }
                self.process_queue();
            }
            return;
        }
        if let Some(active) = &self.active {
            if fd == std::os::fd::AsRawFd::as_raw_fd(&active.queue_evt) {
                let _ = active.queue_evt.read();
                self.process_queue();
            }
        }
    }
}
