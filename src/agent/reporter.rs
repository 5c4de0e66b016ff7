//! Sends replica health transitions to the registry, through the leader.
//!
//! Replicas publish their latest health here; a transition that has not been sent yet
//! is replaced by a newer one (the registry only needs the latest). One task sends them
//! one at a time; a report the cluster could not take is retried, and one the registry
//! rejects as stale (the slot moved) is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::replica::ReplicaKey;
use crate::node::{NodeError, NodeHandle};
use crate::registry::{Command, Outcome, ReplicaHealth};

/// Pause before resending reports after the cluster could not take one.
const RETRY_PAUSE_MS: u64 = 200;

/// Reports waiting to be sent, latest per slot. Bounded by the replicas this node runs.
#[derive(Default)]
pub struct Reports {
    pending: Mutex<BTreeMap<(String, u32), (u64, ReplicaHealth)>>,
    wake: Notify,
}

impl Reports {
    pub fn publish(&self, key: &ReplicaKey, health: ReplicaHealth) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert((key.server.clone(), key.slot), (key.epoch, health));
        }
        self.wake.notify_one();
    }

    /// Drops what is waiting for a slot this node no longer runs.
    pub fn forget(&self, server: &str, slot: u32) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&(server.to_string(), slot));
        }
    }

    fn take_first(&self) -> Option<((String, u32), (u64, ReplicaHealth))> {
        self.pending.lock().ok()?.pop_first()
    }

    /// Puts back a report that could not be sent, unless a newer one arrived meanwhile.
    fn put_back(&self, key: (String, u32), report: (u64, ReplicaHealth)) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(key).or_insert(report);
        }
    }
}

/// Sends reports until the node shuts down.
pub async fn run(handle: Arc<NodeHandle>, reports: Arc<Reports>) {
    let shutdown = handle.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let Some((key, (epoch, health))) = reports.take_first() else {
            tokio::select! {
                _ = reports.wake.notified() => continue,
                _ = &mut shutdown => return,
            }
        };
        let command = Command::ReportHealth {
            server: key.0.clone(),
            slot: key.1,
            epoch,
            health: health.clone(),
        };
        let sent = tokio::select! {
            sent = handle.propose(command) => sent,
            _ = &mut shutdown => return,
        };
        match sent {
            Ok(Outcome::Applied { .. }) => {}
            Ok(Outcome::Rejected(error)) => {
                tracing::debug!(server = %key.0, slot = key.1, %error, "health report dropped");
            }
            Err(NodeError::ShuttingDown) => return,
            Err(error) => {
                tracing::debug!(%error, "health report not taken; retrying");
                reports.put_back(key, (epoch, health));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}
