//! Long polling without busy waiting: one `tokio::sync::Notify` per queue with parked pulls, woken by the
//! store's dispatcher through [`comet_store::ArrivalListener`].
//!
//! Lost wake-ups are avoided by order: a pull first registers interest ([`QueueWatch::enabled`]), then re-reads
//! the queue, then waits. The dispatcher makes a message visible before it calls `on_arrival`, so a message
//! dispatched between the read and the wait still wakes the registered waiter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use comet_model::{QueueId, QueueOffset};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::error::{BrokerError, Result};

/// Parked pulls of every queue, and the shutdown signal that answers them all.
#[derive(Debug)]
pub struct PullWaiters {
    /// topic → queue id → notifier; entries stay for the life of the queue (bounded by the topic table).
    queues: Mutex<HashMap<String, HashMap<QueueId, Arc<Notify>>>>,
    parked: AtomicUsize,
    max_parked: usize,
    stopping: AtomicBool,
    shutdown: Notify,
}

/// A parked pull's slot; releases it on drop.
#[derive(Debug)]
pub struct Parked<'a> {
    waiters: &'a PullWaiters,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.waiters.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PullWaiters {
    /// Waiters allowing at most `max_parked` parked pulls at once.
    pub fn new(max_parked: usize) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
            max_parked,
            stopping: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }

    /// Takes a parking slot; [`BrokerError::Busy`] when `max_parked` pulls are already waiting.
    pub fn park(&self) -> Result<Parked<'_>> {
        let now = self.parked.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Parked { waiters: self };
        if now > self.max_parked {
            return Err(BrokerError::Busy { reason: format!("{} long polls already parked", self.max_parked) });
        }
        Ok(slot)
    }

    /// Pulls parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// The notifier of one queue (created on first use).
    pub fn watch(&self, topic: &str, queue_id: QueueId) -> QueueWatch {
        let mut queues = self.queues.lock();
        let per_topic = match queues.get_mut(topic) {
            Some(q) => q,
            None => queues.entry(topic.to_owned()).or_default(),
        };
        QueueWatch { notify: Arc::clone(per_topic.entry(queue_id).or_default()) }
    }

    /// Wakes every pull parked on the queue.
    pub fn wake(&self, topic: &str, queue_id: QueueId) {
        let notify = self.queues.lock().get(topic).and_then(|q| q.get(&queue_id)).cloned();
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Forgets a deleted topic's notifiers (their parked pulls are woken and re-read).
    pub fn remove_topic(&self, topic: &str) {
        if let Some(queues) = self.queues.lock().remove(topic) {
            queues.values().for_each(|n| n.notify_waiters());
        }
    }

    /// Answers every parked pull now and makes later pulls answer without waiting.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// True once [`PullWaiters::shut_down`] ran.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A future completing at shutdown, registered at once (so a shutdown right after this call is not missed;
    /// check [`PullWaiters::is_stopping`] after taking it).
    pub fn shutdown_signal(&self) -> std::pin::Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.shutdown.notified());
        notified.as_mut().enable();
        notified
    }
}

/// Interest in one queue's arrivals.
#[derive(Debug, Clone)]
pub struct QueueWatch {
    notify: Arc<Notify>,
}

impl QueueWatch {
    /// A future completing at the next arrival, already registered: arrivals after this call wake it even if
    /// it is first polled later.
    pub fn enabled(&self) -> std::pin::Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        notified
    }
}

impl comet_store::ArrivalListener for PullWaiters {
    // Hot path (dispatcher thread): one short lock, no allocation, no blocking.
    fn on_arrival(&self, topic: &str, queue_id: QueueId, _max_offset: QueueOffset) {
        self.wake(topic, queue_id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use comet_store::ArrivalListener;

    use super::*;

    #[tokio::test]
    async fn an_arrival_after_registration_wakes_the_waiter_even_before_it_polls() {
        let waiters = PullWaiters::new(10);
        let watch = waiters.watch("t", 0);
        let notified = watch.enabled();
        // The arrival lands between registration and the wait: the classic lost wake-up.
        waiters.on_arrival("t", 0, QueueOffset(1));
        tokio::time::timeout(Duration::from_secs(5), notified).await.unwrap();
    }

    #[tokio::test]
    async fn arrivals_wake_only_their_own_queue() {
        let waiters = PullWaiters::new(10);
        let watch0 = waiters.watch("t", 0);
        let watch1 = waiters.watch("t", 1);
        let n0 = watch0.enabled();
        let n1 = watch1.enabled();
        waiters.on_arrival("t", 1, QueueOffset(1));
        waiters.on_arrival("other", 0, QueueOffset(1));
        tokio::time::timeout(Duration::from_secs(5), n1).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(20), n0).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_wakes_every_parked_pull() {
        let waiters = PullWaiters::new(10);
        let signal = waiters.shutdown_signal();
        waiters.shut_down();
        tokio::time::timeout(Duration::from_secs(5), signal).await.unwrap();
        assert!(waiters.is_stopping());
    }

    #[test]
    fn parking_beyond_the_limit_is_busy_and_slots_are_released_on_drop() {
        let waiters = PullWaiters::new(2);
        let a = waiters.park().unwrap();
        let _b = waiters.park().unwrap();
        assert!(matches!(waiters.park(), Err(BrokerError::Busy { .. })));
        assert_eq!(waiters.parked(), 2, "the refused slot was released");
        drop(a);
        assert!(waiters.park().is_ok());
    }
}
