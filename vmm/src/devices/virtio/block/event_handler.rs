//! virtio-blk on the event loop: activation (register the queue eventfd) and queue notifications.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("block: registering activate event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == std::os::fd::AsRawFd::as_raw_fd(&self.activate_evt) {
            let _ = self.activate_evt.read();
            for evt in self.retired_evts.drain(..) {
                let _ = ops.remove(Events::empty(&evt));
            }
            self.registered = false;
            if let Some(active) = &self.active {
                match ops.add(Events::new(&active.queue_evt, EventSet::IN)) {
                    Ok(()) => self.registered = true,
                    Err(e) => tracing::error!("block: registering queue event: {e}"),
                }
                // Requests may have been queued before we listened.
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
