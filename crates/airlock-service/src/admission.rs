//! Admission control: a cap on backend operations running at once and on live
//! sessions. A request beyond a cap waits in a bounded queue for a bounded time, then
//! is refused, so the server's memory stays flat whatever the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airlock_core::units::format_duration_ms;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a permit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A backend operation: an execution, or the creation of a sandbox.
    Run,
    /// A live session (a stateful sandbox).
    Sandbox,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `queue_full`, `queue_timeout` or `shutting_down`.
    pub reason: &'static str,
    /// What happened, for the caller.
    pub message: String,
}

/// The caps and the queue.
#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    max_running: usize,
    sandboxes: Arc<Semaphore>,
    max_sandboxes: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// Decrements the waiting count when a waiter leaves, however it leaves.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// Caps of `max_running` operations and `max_sandboxes` sessions; at most
    /// `max_queue` requests wait, each at most `queue_timeout`.
    pub fn new(max_running: usize, max_sandboxes: usize, max_queue: usize, queue_timeout: Duration) -> Self {
        Admission {
            running: Arc::new(Semaphore::new(max_running)),
            max_running,
            sandboxes: Arc::new(Semaphore::new(max_sandboxes)),
            max_sandboxes,
            waiting: AtomicUsize::new(0),
            max_queue,
            queue_timeout,
        }
    }

    /// A permit for `slot`, at once or after waiting in the queue. Returns how long it
    /// waited with the permit.
    pub async fn admit(&self, slot: Slot) -> Result<(OwnedSemaphorePermit, Duration), Rejected> {
        let (sem, max, what) = match slot {
            Slot::Run => (&self.running, self.max_running, "running executions"),
            Slot::Sandbox => (&self.sandboxes, self.max_sandboxes, "live sandboxes"),
        };
        match sem.clone().try_acquire_owned() {
            Ok(p) => return Ok((p, Duration::ZERO)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if before >= self.max_queue {
            return Err(Rejected {
                reason: "queue_full",
                message: format!(
                    "the server is at its limit of {max} {what} and {} requests are already waiting; retry later",
                    self.max_queue
                ),
            });
        }
        let start = Instant::now();
        match tokio::time::timeout(self.queue_timeout, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok((p, start.elapsed())),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(Rejected {
                reason: "queue_timeout",
                message: format!(
                    "the server is at its limit of {max} {what}; no slot became free within {}; retry later",
                    format_duration_ms(self.queue_timeout.as_millis() as u64)
                ),
            }),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Backend operations running now.
    pub fn running(&self) -> usize {
        self.max_running.saturating_sub(self.running.available_permits())
    }

    /// The cap on backend operations.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// The cap on live sessions.
    pub fn max_sandboxes(&self) -> usize {
        self.max_sandboxes
    }

    /// Refuses every waiting and future request (shutdown).
    pub fn close(&self) {
        self.running.close();
        self.sandboxes.close();
    }
}

fn closed() -> Rejected {
    Rejected { reason: "shutting_down", message: "the server is shutting down".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_then_times_out_and_bounds_the_queue() {
        let a = Arc::new(Admission::new(1, 1, 1, Duration::from_millis(100)));
        let (held, waited) = a.admit(Slot::Run).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(a.running(), 1);

        // One waiter fits in the queue and times out; a second is refused at once.
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit(Slot::Run).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.queue_depth(), 1);
        let full = a.admit(Slot::Run).await.unwrap_err();
        assert_eq!(full.reason, "queue_full");
        let timed_out = waiter.await.unwrap().unwrap_err();
        assert_eq!(timed_out.reason, "queue_timeout");
        assert!(timed_out.message.contains("1 running executions"), "{}", timed_out.message);
        assert_eq!(a.queue_depth(), 0);

        // A waiter gets the slot when it is released.
        let a3 = a.clone();
        let waiter = tokio::spawn(async move { a3.admit(Slot::Run).await.map(|(_, w)| w) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap().unwrap() > Duration::ZERO);

        a.close();
        assert_eq!(a.admit(Slot::Sandbox).await.unwrap_err().reason, "shutting_down");
    }
}
