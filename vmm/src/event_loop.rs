//! The VMM's event-loop thread: one `EventManager` with every device as a subscriber, plus a stop
//! eventfd. Queue processing happens here; vCPU threads only touch the transport registers.
//!
//! Stopping is bounded whatever the guest does: devices do bounded work per event (see
//! `devices::virtio::queue`), no event is dispatched to a device once a stop was requested, and
//! [`EventLoop::stop`] waits for the thread only until a deadline; a thread that doesn't finish
//! (a device stuck in a call) is detached and reported instead of blocking teardown forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Why the event loop could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Creating the event manager.
    #[error("creating the event manager: {0}")]
    Manager(String),
    /// Its stop eventfd.
    #[error("creating the stop eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Its thread.
    #[error("spawning the event loop thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The thread did not return in time (it was left running).
    #[error("the event loop thread did not stop within {0:?}; detached")]
    StopTimeout(Duration),
}

/// How long [`EventLoop::stop`] waits for the thread.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A device as the event manager sees it: events are no longer passed on once stop is requested
/// (the loop then exits after the current batch instead of serving devices again).
struct Guarded {
    inner: Subscriber,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for Guarded {
    fn init(&mut self, ops: &mut EventOps) {
        self.inner.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        self.inner.process(events, ops);
    }
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

/// The event-loop thread and how to stop it.
#[derive(Debug)]
pub struct EventLoop {
    thread: Option<JoinHandle<()>>,
    stop_evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    /// Subscribes every device and starts the thread.
    /// The thread installs `filter` (seccomp) before it touches a device.
    pub fn start(
        subscribers: Vec<Subscriber>,
        filter: Option<seccompiler::BpfProgram>,
    ) -> Result<Self, EventLoopError> {
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let stop_flag = Arc::new(AtomicBool::new(false));
        let stopper = Stopper {
            evt: stop_evt.try_clone().map_err(EventLoopError::EventFd)?,
            stop: stop_flag.clone(),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .stack_size(crate::threads::THREAD_STACK_SIZE)
            .spawn(move || {
                let stop = stopper.stop.clone();
                let mut em = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
                    Ok(em) => em,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                em.add_subscriber(Box::new(stopper));
                for inner in subscribers {
                    em.add_subscriber(Box::new(Guarded {
                        inner,
                        stop: stop.clone(),
                    }));
                }
                // Once its epoll set exists: from here on it only waits, reads and writes.
                if let Err(e) = crate::threads::apply_filter(filter.as_ref()) {
                    let _ = tx.send(Err(format!("installing its seccomp filter: {e}")));
                    return;
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
                stop: stop_flag,
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

    /// Asks the thread to stop (returns at once; see [`EventLoop::join_until`]).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread if it waits in epoll.
        let _ = self.stop_evt.write(1);
    }

    /// Waits for the thread until `deadline`; past it the thread is detached (it and the devices
    /// it holds leak) and an error returned. Subscribers are dropped with the manager.
    pub fn join_until(&mut self, deadline: Instant) -> Result<(), EventLoopError> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let started = Instant::now();
        while !t.is_finished() {
            if Instant::now() >= deadline {
                let waited = started.elapsed();
                tracing::error!("event loop thread did not stop within {waited:?}; detaching it");
                return Err(EventLoopError::StopTimeout(waited));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = t.join();
        Ok(())
    }

    /// Stops and joins the thread, waiting at most [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> Result<(), EventLoopError> {
        self.request_stop();
        self.join_until(Instant::now() + STOP_TIMEOUT)
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop();
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
        let mut el = EventLoop::start(vec![Arc::new(Mutex::new(c))], None).unwrap();
        evt.write(1).unwrap();
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let _ = el.stop();
        let _ = el.stop();
    }

    /// A device stuck inside `process` (until `release`).
    struct Stuck {
        evt: EventFd,
        entered: Arc<AtomicBool>,
        release: Arc<AtomicBool>,
    }
    impl MutEventSubscriber for Stuck {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            self.entered.store(true, Ordering::SeqCst);
            while !self.release.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn stop_is_bounded_when_a_device_hangs() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let entered = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let stuck = Stuck {
            evt: evt.try_clone().unwrap(),
            entered: entered.clone(),
            release: release.clone(),
        };
        let mut el = EventLoop::start(vec![Arc::new(Mutex::new(stuck))], None).unwrap();
        evt.write(1).unwrap();
        while !entered.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let r = el.stop();
            let _ = tx.send(r.is_err());
        });
        let timed_out = rx.recv_timeout(Duration::from_secs(10));
        release.store(true, Ordering::SeqCst);
        assert_eq!(
            timed_out,
            Ok(true),
            "stop must return (with an error) in bounded time"
        );
        assert!(started.elapsed() < STOP_TIMEOUT + Duration::from_secs(1));
    }

    /// A device whose fd is always ready (it re-arms itself on every event).
    struct Busy {
        evt: EventFd,
    }
    impl MutEventSubscriber for Busy {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            let _ = self.evt.write(1);
        }
    }

    #[test]
    fn stop_is_reached_with_a_device_that_is_always_ready() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let busy = Busy {
            evt: evt.try_clone().unwrap(),
        };
        let mut el = EventLoop::start(vec![Arc::new(Mutex::new(busy))], None).unwrap();
        evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        el.stop().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
