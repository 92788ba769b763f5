//! Single flight: concurrent requests for the same thing share one registry lookup.
//!
//! The first request for a key starts the lookup as a task of its own; later ones join it,
//! adding what they want of it (an *interest*: the verifiers to judge the signatures with).
//! The task runs to its end whether or not anyone still waits, so a lookup cut short by a
//! request's deadline still fills the cache. Before the task leaves the table it takes the
//! interests added while it worked, so none is lost; a request that comes after finds the
//! cache written (it checks again while holding the table's lock).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Lookups in flight, by key.
pub struct Flights<K, I, V> {
    table: Mutex<HashMap<K, Arc<Flight<I, V>>>>,
}

struct Flight<I, V> {
    interests: Mutex<Vec<I>>,
    done: watch::Sender<Option<V>>,
}

/// What joining gives: the answer at once (it was cached meanwhile), or a flight to wait for.
pub enum Joined<V> {
    Ready(V),
    Waiting(Waiter<V>),
}

/// A place in a flight.
pub struct Waiter<V> {
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Waiter<V> {
    /// The flight's result; `None` when the flight ended without one (its task panicked or was
    /// cancelled).
    pub async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

/// The lookup's handle on its flight: it takes the interests, and leaves the table when done
/// (or when dropped, should the lookup end early).
pub struct Ticket<K: Hash + Eq, I, V> {
    flights: Arc<Flights<K, I, V>>,
    key: K,
    flight: Arc<Flight<I, V>>,
    left: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The table stays consistent whatever panicked while it was held: every change is one call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Hash + Eq + Clone, I, V: Clone> Flights<K, I, V> {
    pub fn new() -> Flights<K, I, V> {
        Flights {
            table: Mutex::new(HashMap::new()),
        }
    }

    /// How many lookups are in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Joins the flight for `key` with `interest`. When there is none, `recheck` is asked (under
    /// the table's lock) whether the answer is there now; if not, `start` starts the lookup,
    /// which gets the flight's [`Ticket`] and whose result every waiter gets.
    pub fn join<F>(
        self: &Arc<Self>,
        key: K,
        interest: I,
        recheck: impl FnOnce() -> Option<V>,
        start: F,
    ) -> Joined<V>
    where
        F: FnOnce(Ticket<K, I, V>) -> tokio::task::JoinHandle<()>,
    {
        let mut table = lock(&self.table);
        if let Some(flight) = table.get(&key) {
            lock(&flight.interests).push(interest);
            return Joined::Waiting(Waiter {
                rx: flight.done.subscribe(),
            });
        }
        if let Some(v) = recheck() {
            return Joined::Ready(v);
        }
        let (done, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            interests: Mutex::new(vec![interest]),
            done,
        });
        table.insert(key.clone(), flight.clone());
        drop(table);
        let ticket = Ticket {
            flights: self.clone(),
            key,
            flight,
            left: false,
        };
        // The task is detached: it runs to its end even when every waiter has gone.
        drop(start(ticket));
        Joined::Waiting(Waiter { rx })
    }
}

impl<K: Hash + Eq + Clone, I, V: Clone> Default for Flights<K, I, V> {
    fn default() -> Self {
        Flights::new()
    }
}

impl<K: Hash + Eq, I, V> Ticket<K, I, V> {
    /// The interests added since the last call.
    pub fn take(&self) -> Vec<I> {
        std::mem::take(&mut *lock(&self.flight.interests))
    }

    /// Leaves the table if no interest was added since the last [`Ticket::take`]; otherwise
    /// returns the new ones (for the lookup to serve, then try again). Once it has left, a new
    /// request starts a new lookup, so what this one found must be in the cache by then.
    pub fn leave_unless_new(&mut self) -> Result<(), Vec<I>> {
        let mut table = lock(&self.flights.table);
        let new = std::mem::take(&mut *lock(&self.flight.interests));
        if !new.is_empty() {
            return Err(new);
        }
        remove(&mut table, &self.key, &self.flight);
        drop(table);
        self.left = true;
        Ok(())
    }

    /// Gives every waiter the result (after leaving the table).
    pub fn finish(mut self, value: V) {
        self.leave();
        self.flight.done.send_replace(Some(value));
    }

    fn leave(&mut self) {
        if !self.left {
            remove(&mut lock(&self.flights.table), &self.key, &self.flight);
            self.left = true;
        }
    }
}

/// Removes `flight` from the table, unless another flight for `key` has replaced it.
fn remove<K: Hash + Eq, I, V>(
    table: &mut HashMap<K, Arc<Flight<I, V>>>,
    key: &K,
    flight: &Arc<Flight<I, V>>,
) {
    if table.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        table.remove(key);
    }
}

impl<K: Hash + Eq, I, V> Drop for Ticket<K, I, V> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_joins_share_one_lookup_and_every_interest_is_served() {
        let flights: Arc<Flights<&str, u32, Vec<u32>>> = Arc::new(Flights::new());
        let lookups = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let mut waiters = Vec::new();
        for i in 0..100u32 {
            let lookups = lookups.clone();
            let released = released.clone();
            let joined = flights.join(
                "k",
                i,
                || None,
                move |mut ticket| {
                    tokio::spawn(async move {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        if let Some(r) = released.lock().await.take() {
                            let _ = r.await;
                        }
                        let mut served = ticket.take();
                        while let Err(more) = ticket.leave_unless_new() {
                            served.extend(more);
                        }
                        served.sort_unstable();
                        ticket.finish(served);
                    })
                },
            );
            match joined {
                Joined::Waiting(w) => waiters.push(w),
                Joined::Ready(_) => panic!("nothing is cached"),
            }
        }
        assert_eq!(flights.len(), 1);
        release.send(()).unwrap();
        for w in waiters {
            assert_eq!(w.wait().await.unwrap(), (0..100).collect::<Vec<_>>());
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn an_answer_cached_meanwhile_is_used_and_a_dropped_lookup_leaves_the_table() {
        let flights: Arc<Flights<&str, (), u32>> = Arc::new(Flights::new());
        match flights.join("k", (), || Some(7), |_| unreachable!()) {
            Joined::Ready(v) => assert_eq!(v, 7),
            Joined::Waiting(_) => panic!("the recheck answered"),
        }
        let joined = flights.join(
            "k",
            (),
            || None,
            |ticket| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    drop(ticket);
                })
            },
        );
        let Joined::Waiting(w) = joined else {
            panic!("a lookup starts")
        };
        assert_eq!(w.wait().await, None);
        assert_eq!(flights.len(), 0);
    }
}
