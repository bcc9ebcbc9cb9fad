//! In-process mutexes by name: what `BEGIN IMMEDIATE` gives SQLite, per fact (design §3.1).
//!
//! A check-then-write on a shared fact (a token's remaining uses, a unique name, one live admin
//! of a name, a cluster's certificate list) holds that fact's lock from the check until the
//! write's result is in the cache, so two callers cannot both pass a check only one may pass.
//! Callers that take several take them in one order — token, then name, then cluster — so two
//! of them never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// Locks by key; a key's entry lives while someone holds or waits for it.
#[derive(Default)]
pub(super) struct Locks {
    slots: Mutex<HashMap<String, Slot>>,
}

/// A held lock; released when dropped.
pub(super) struct Held<'a> {
    locks: &'a Locks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    /// Waits for `key`'s lock.
    pub async fn lock(&self, key: String) -> Held<'_> {
        let slot = Arc::clone(
            self.slots
                .lock()
                .expect("lock")
                .entry(key.clone())
                .or_default(),
        );
        let guard = slot.lock_owned().await;
        Held {
            locks: self,
            key,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("lock").len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut slots = self.locks.slots.lock().expect("lock");
        // Released under the map's lock: a waiter clones the slot under it too, so a slot held
        // by the map alone has nobody holding or waiting.
        self.guard.take();
        if slots
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_holder_per_key_and_no_entry_left_behind() {
        let locks = Arc::new(Locks::default());
        let first = locks.lock("token:a".into()).await;
        let other = locks.lock("token:b".into()).await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _held = locks.lock("token:a".into()).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "the key is held");
        drop(other);
        assert_eq!(locks.len(), 1, "a released key nobody waits for is gone");
        drop(first);
        waiter.await.expect("the waiter gets the lock");
        assert_eq!(locks.len(), 0);
    }
}
