//! A running cell's events on their way to whoever streams them (NDJSON, SSE, MCP),
//! through a bounded queue with back-pressure.
//!
//! Backends are synchronous and call their event sink on the thread that runs the
//! cell. The sink puts each event into a queue of [`EVENT_QUEUE`] events; when a slow
//! reader lets it fill, the cell's thread waits for room, so the guest in turn blocks
//! on its own writes and the server holds at most [`EVENT_QUEUE`] events per stream.
//! The wait ends at the run's wall-clock limit, or at once when the run is cancelled:
//! from then on the events are dropped from the stream (the final outcome still has
//! everything), so a reader can slow a run down but never hold it past its limits.
//! A reader that goes away closes the queue, and the run goes on without it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_core::Event;
use airlock_core::backend::Canceller;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Events a stream may hold before the run waits for its reader.
pub const EVENT_QUEUE: usize = 16;

/// The sending half of a run's event queue, given to [`crate::Pending::run`].
pub type EventSender = mpsc::Sender<Event>;

/// The receiving half, read by a transport.
pub type EventReceiver = mpsc::Receiver<Event>;

/// A new event queue for one run, bounded to [`EVENT_QUEUE`] events.
pub fn event_channel() -> (EventSender, EventReceiver) {
    mpsc::channel(EVENT_QUEUE)
}

/// The sink side, on the thread that runs the cell.
pub(crate) struct Forwarder {
    tx: Option<EventSender>,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    /// Events dropped because the reader did not keep up before the deadline.
    pub(crate) dropped: u64,
}

impl Forwarder {
    /// Forwards to `tx` (none: events are discarded), waiting for a slow reader at
    /// most until `deadline`.
    pub(crate) fn new(tx: Option<EventSender>, deadline: Instant) -> Self {
        Forwarder { tx, deadline, cancelled: Arc::new(AtomicBool::new(false)), dropped: 0 }
    }

    /// Wraps a run's canceller so that cancelling it also stops this forwarder from
    /// waiting for its reader.
    pub(crate) fn cancel_wrapper(&self) -> impl Fn(Canceller) -> Canceller + use<> {
        let flag = self.cancelled.clone();
        move |c: Canceller| {
            let flag = flag.clone();
            Arc::new(move || {
                flag.store(true, Ordering::SeqCst);
                c();
            }) as Canceller
        }
    }

    /// Sends one event, waiting while the queue is full (see the module's comment).
    pub(crate) fn send(&mut self, ev: Event) {
        let Some(tx) = &self.tx else { return };
        if self.dropped > 0 {
            // Once the stream lost an event it stays stopped: no gaps in the middle.
            self.dropped += 1;
            return;
        }
        let mut ev = ev;
        let mut pause = Duration::from_millis(1);
        loop {
            match tx.try_send(ev) {
                Ok(()) => return,
                Err(TrySendError::Closed(_)) => {
                    self.tx = None; // the reader went away
                    return;
                }
                Err(TrySendError::Full(back)) => ev = back,
            }
            let now = Instant::now();
            if now >= self.deadline || self.cancelled.load(Ordering::SeqCst) {
                self.dropped += 1;
                tracing::debug!("a stream's reader fell behind past the run's deadline; its events are dropped");
                return;
            }
            std::thread::sleep(pause.min(self.deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> Event {
        Event::Stdout { text: i.to_string() }
    }

    #[test]
    fn a_full_queue_waits_until_the_deadline_then_drops() {
        let (tx, mut rx) = event_channel();
        let mut f = Forwarder::new(Some(tx), Instant::now() + Duration::from_millis(200));
        for i in 0..EVENT_QUEUE {
            f.send(ev(i));
        }
        assert_eq!(f.dropped, 0);
        let t = Instant::now();
        f.send(ev(99));
        assert!(t.elapsed() >= Duration::from_millis(150), "it did not wait for the reader");
        assert_eq!(f.dropped, 1);
        f.send(ev(100));
        assert_eq!(f.dropped, 2);
        assert_eq!(rx.try_recv().unwrap(), ev(0));
        let mut n = 1;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, EVENT_QUEUE, "the queue held exactly its capacity");
    }

    #[test]
    fn a_reader_that_frees_room_lets_the_event_through_and_a_gone_reader_stops_nothing() {
        let (tx, mut rx) = event_channel();
        let mut f = Forwarder::new(Some(tx), Instant::now() + Duration::from_secs(30));
        for i in 0..EVENT_QUEUE {
            f.send(ev(i));
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let first = rx.blocking_recv();
            drop(rx);
            first
        });
        f.send(ev(16));
        assert_eq!(f.dropped, 0, "the event waited for room instead of being dropped");
        assert_eq!(reader.join().unwrap(), Some(ev(0)));
        let t = Instant::now();
        for i in 0..1000 {
            f.send(ev(i));
        }
        assert!(t.elapsed() < Duration::from_secs(1), "a closed stream must not slow the run");
    }

    #[test]
    fn cancelling_ends_the_wait() {
        let (tx, _rx) = event_channel();
        let mut f = Forwarder::new(Some(tx), Instant::now() + Duration::from_secs(60));
        for i in 0..EVENT_QUEUE {
            f.send(ev(i));
        }
        let c = f.cancel_wrapper()(Arc::new(|| {}));
        let t = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c();
        });
        f.send(ev(99));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(f.dropped, 1);
    }
}
