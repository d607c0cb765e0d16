//! The VMM's event-loop thread: one `EventManager` with every device as a subscriber, plus a stop
//! eventfd. Queue processing happens here; vCPU threads only touch the transport registers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("creating the event manager: {0}")]
    Manager(String),
    #[error("creating the stop eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("spawning the event loop thread: {0}")]
    Spawn(#[source] std::io::Error),
}

struct Stopper {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stopper {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("event loop: registering stop event: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub struct EventLoop {
    thread: Option<JoinHandle<()>>,
    stop_evt: EventFd,
}

impl EventLoop {
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, EventLoopError> {
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let stopper = Stopper {
            evt: stop_evt.try_clone().map_err(EventLoopError::EventFd)?,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .stack_size(crate::THREAD_STACK_SIZE)
            .spawn(move || {
                let stop = stopper.stop.clone();
                let mut em = match EventManager::<Subscriber>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                em.add_subscriber(Arc::new(Mutex::new(stopper)));
                for s in subscribers {
                    em.add_subscriber(s);
                }
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = em.run() {
                        tracing::error!("event loop: {e}");
                        break;
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Self {
                thread: Some(thread),
                stop_evt,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(EventLoopError::Manager(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(EventLoopError::Manager("event loop thread died".into()))
            }
        }
    }

    /// Stops and joins the thread; subscribers (devices) are dropped with the manager.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop_evt.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        evt: EventFd,
        hits: Arc<std::sync::atomic::AtomicU32>,
    }
    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            let _ = self.evt.read();
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn dispatches_and_stops() {
        let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let c = Counter {
            evt: evt.try_clone().unwrap(),
            hits: hits.clone(),
        };
        let mut el = EventLoop::start(vec![Arc::new(Mutex::new(c))]).unwrap();
        evt.write(1).unwrap();
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        el.stop();
        el.stop();
    }
}
