//! The wait registry: a proposer registers its request ID before proposing and the applier
//! fills the entry once the request is applied and committed to the backend.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub struct WaitRegistry<T> {
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for WaitRegistry<T> {
    fn default() -> Self {
        WaitRegistry { waiters: Mutex::new(HashMap::new()) }
    }
}

impl<T> WaitRegistry<T> {
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        rx
    }

    /// Delivers a result; a request proposed by another member (or whose caller gave up)
    /// has no waiter here, and that is fine.
    pub fn trigger(&self, id: u64, value: T) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(value);
        }
    }

    pub fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }

    /// Requests still waiting for their answer.
    pub fn pending(&self) -> usize {
        self.waiters.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn triggered_waiter_receives_its_value_once() {
        let w = WaitRegistry::default();
        let rx = w.register(7);
        w.trigger(8, "other");
        w.trigger(7, "mine");
        w.trigger(7, "again");
        assert_eq!(rx.await.unwrap(), "mine");
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn cancelled_waiter_is_removed() {
        let w: WaitRegistry<u8> = WaitRegistry::default();
        let _rx = w.register(1);
        w.cancel(1);
        assert_eq!(w.pending(), 0);
    }
}
