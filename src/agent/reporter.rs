//! Sends replica health transitions and catalogs to the registry, through the leader.
//!
//! Replicas publish their latest health and catalog here; a report that has not been
//! sent yet is replaced by a newer one (the registry only needs the latest), and keeps
//! its place in the queue. One task sends them one at a time, the longest waiting
//! first; a report the cluster could not take is retried, and one
//! the registry rejects as stale (the slot moved) is dropped. A catalog equal to the
//! one the registry holds is not sent at all, so the replicas of one server write it
//! once between them, and again only when it changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::replica::ReplicaKey;
use super::Context;
use crate::control::NodeError;
use crate::registry::{Catalog, Command, Outcome, ReplicaHealth};

/// Pause before resending reports after the cluster could not take one.
const RETRY_PAUSE_MS: u64 = 200;

/// Reports of one kind waiting to be sent, the latest per slot, oldest first: a slot
/// keeps its place while newer reports replace its value, so that slots whose health
/// changes all the time (replicas in crash-loop) never starve the others.
struct Queue<V> {
    /// Per slot: its place in `order`, the epoch and the report.
    waiting: BTreeMap<(String, u32), (u64, u64, V)>,
    /// Slot by place.
    order: BTreeMap<u64, (String, u32)>,
    next_place: u64,
}

impl<V> Default for Queue<V> {
    fn default() -> Self {
        Queue {
            waiting: BTreeMap::new(),
            order: BTreeMap::new(),
            next_place: 0,
        }
    }
}

impl<V> Queue<V> {
    /// Replaces what waits for `key`, or queues it last.
    fn publish(&mut self, key: (String, u32), epoch: u64, value: V) {
        let place = match self.waiting.get(&key) {
            Some((place, _, _)) => *place,
            None => {
                let place = self.next_place;
                self.next_place += 1;
                self.order.insert(place, key.clone());
                place
            }
        };
        self.waiting.insert(key, (place, epoch, value));
    }

    /// Puts back what was taken from `place`, unless a newer report arrived meanwhile.
    fn put_back(&mut self, place: u64, key: (String, u32), epoch: u64, value: V) {
        if !self.waiting.contains_key(&key) {
            self.order.insert(place, key.clone());
            self.waiting.insert(key, (place, epoch, value));
        }
    }

    fn forget(&mut self, key: &(String, u32)) {
        if let Some((place, _, _)) = self.waiting.remove(key) {
            self.order.remove(&place);
        }
    }

    /// The oldest waiting: its place, slot, epoch and report.
    fn take(&mut self) -> Option<(u64, (String, u32), u64, V)> {
        let (place, key) = self.order.pop_first()?;
        let (_, epoch, value) = self.waiting.remove(&key)?;
        Some((place, key, epoch, value))
    }
}

/// Reports waiting to be sent, latest per slot, oldest first. Bounded by the replicas
/// this node runs.
#[derive(Default)]
pub struct Reports {
    pending: Mutex<Queue<ReplicaHealth>>,
    catalogs: Mutex<Queue<Catalog>>,
    wake: Notify,
}

impl Reports {
    pub fn publish(&self, key: &ReplicaKey, health: ReplicaHealth) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.publish((key.server.clone(), key.slot), key.epoch, health);
        }
        self.wake.notify_one();
    }

    pub fn publish_catalog(&self, key: &ReplicaKey, catalog: Catalog) {
        if let Ok(mut pending) = self.catalogs.lock() {
            pending.publish((key.server.clone(), key.slot), key.epoch, catalog);
        }
        self.wake.notify_one();
    }

    /// Drops what is waiting for a slot this node no longer runs.
    pub fn forget(&self, server: &str, slot: u32) {
        let key = (server.to_string(), slot);
        if let Ok(mut pending) = self.pending.lock() {
            pending.forget(&key);
        }
        if let Ok(mut pending) = self.catalogs.lock() {
            pending.forget(&key);
        }
    }

    /// The next report: health first, then catalogs; of each, the longest waiting.
    fn take_first(&self) -> Option<Report> {
        if let Some((place, key, epoch, health)) = self.pending.lock().ok()?.take() {
            return Some(Report::Health(place, key, epoch, health));
        }
        let (place, key, epoch, catalog) = self.catalogs.lock().ok()?.take()?;
        Some(Report::Catalog(place, key, epoch, catalog))
    }

    /// Puts back a report that could not be sent, unless a newer one arrived meanwhile.
    fn put_back(&self, report: Report) {
        match report {
            Report::Health(place, key, epoch, health) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.put_back(place, key, epoch, health);
                }
            }
            Report::Catalog(place, key, epoch, catalog) => {
                if let Ok(mut pending) = self.catalogs.lock() {
                    pending.put_back(place, key, epoch, catalog);
                }
            }
        }
    }
}

/// A report taken from its queue, with its place there.
enum Report {
    Health(u64, (String, u32), u64, ReplicaHealth),
    Catalog(u64, (String, u32), u64, Catalog),
}

impl Report {
    fn command(&self, node_id: u64) -> Command {
        match self {
            Report::Health(_, (server, slot), epoch, health) => Command::ReportHealth {
                server: server.clone(),
                slot: *slot,
                epoch: *epoch,
                health: health.clone(),
            },
            Report::Catalog(_, (server, slot), epoch, catalog) => Command::ReportCatalog {
                server: server.clone(),
                slot: *slot,
                epoch: *epoch,
                node_id,
                catalog: catalog.clone(),
            },
        }
    }
}

/// Sends reports until the node shuts down.
pub async fn run(context: Context, reports: Arc<Reports>) {
    let shutdown = context.shutdown.clone().cancelled_owned();
    tokio::pin!(shutdown);
    loop {
        let Some(report) = reports.take_first() else {
            tokio::select! {
                _ = reports.wake.notified() => continue,
                _ = &mut shutdown => return,
            }
        };
        if let Report::Catalog(_, (server, _), _, catalog) = &report {
            let known = context.reader.stale().registry.catalogs.get(server) == Some(catalog);
            if known {
                continue;
            }
        }
        let command = report.command(context.config.id);
        let kind = command.kind();
        let sent = tokio::select! {
            sent = context.writer.propose(command) => sent,
            _ = &mut shutdown => return,
        };
        match sent {
            Ok(Outcome::Applied { .. }) => {}
            Ok(Outcome::Rejected(error)) => {
                tracing::debug!(command = kind, %error, "report dropped");
            }
            Err(NodeError::ShuttingDown) => return,
            Err(error) => {
                tracing::debug!(%error, "report not taken; retrying");
                reports.put_back(report);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    fn key(name: &str) -> (String, u32) {
        (name.to_string(), 0)
    }

    #[test]
    fn a_slot_that_reports_all_the_time_keeps_its_place_and_starves_no_other() {
        let mut queue = Queue::default();
        queue.publish(key("b"), 1, "b1");
        queue.publish(key("z"), 1, "z1");
        // "b" changes again and again: it keeps its place before "z", with its latest.
        queue.publish(key("b"), 1, "b2");
        let (place, taken, epoch, value) = queue.take().unwrap();
        assert_eq!((taken.clone(), epoch, value), (key("b"), 1, "b2"));
        queue.publish(key("a"), 1, "a1");
        queue.publish(key("b"), 1, "b3");
        // "z" waited longest; "a" and "b" after it, in the order they came.
        let order: Vec<_> = std::iter::from_fn(|| queue.take())
            .map(|(_, k, _, v)| (k, v))
            .collect();
        assert_eq!(
            order,
            [(key("z"), "z1"), (key("a"), "a1"), (key("b"), "b3")]
        );
        // A report put back goes first again, unless a newer one came meanwhile.
        queue.publish(key("c"), 1, "c1");
        queue.put_back(place, taken.clone(), 1, "b2");
        assert_eq!(queue.take().map(|t| t.3), Some("b2"));
        queue.publish(key("b"), 2, "b4");
        queue.put_back(place, taken, 1, "b2");
        let rest: Vec<_> = std::iter::from_fn(|| queue.take()).map(|t| t.3).collect();
        assert_eq!(rest, ["c1", "b4"]);
        // A forgotten slot leaves no place behind.
        queue.publish(key("d"), 1, "d1");
        queue.forget(&key("d"));
        assert!(queue.take().is_none());
        assert!(queue.order.is_empty());
    }
}
