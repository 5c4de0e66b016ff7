//! Sends replica health transitions and catalogs to the registry, through the leader.
//!
//! Replicas publish their latest health and catalog here; a report that has not been
//! sent yet is replaced by a newer one (the registry only needs the latest). One task
//! sends them one at a time; a report the cluster could not take is retried, and one
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

/// Reports waiting to be sent, latest per slot. Bounded by the replicas this node runs.
#[derive(Default)]
pub struct Reports {
    pending: Mutex<BTreeMap<(String, u32), (u64, ReplicaHealth)>>,
    catalogs: Mutex<BTreeMap<(String, u32), (u64, Catalog)>>,
    wake: Notify,
}

impl Reports {
    pub fn publish(&self, key: &ReplicaKey, health: ReplicaHealth) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert((key.server.clone(), key.slot), (key.epoch, health));
        }
        self.wake.notify_one();
    }

    pub fn publish_catalog(&self, key: &ReplicaKey, catalog: Catalog) {
        if let Ok(mut pending) = self.catalogs.lock() {
            pending.insert((key.server.clone(), key.slot), (key.epoch, catalog));
        }
        self.wake.notify_one();
    }

    /// Drops what is waiting for a slot this node no longer runs.
    pub fn forget(&self, server: &str, slot: u32) {
        let key = (server.to_string(), slot);
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&key);
        }
        if let Ok(mut pending) = self.catalogs.lock() {
            pending.remove(&key);
        }
    }

    /// The next report: health first, then catalogs.
    fn take_first(&self) -> Option<Report> {
        if let Some((key, (epoch, health))) = self.pending.lock().ok()?.pop_first() {
            return Some(Report::Health(key, epoch, health));
        }
        let (key, (epoch, catalog)) = self.catalogs.lock().ok()?.pop_first()?;
        Some(Report::Catalog(key, epoch, catalog))
    }

    /// Puts back a report that could not be sent, unless a newer one arrived meanwhile.
    fn put_back(&self, report: Report) {
        match report {
            Report::Health(key, epoch, health) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.entry(key).or_insert((epoch, health));
                }
            }
            Report::Catalog(key, epoch, catalog) => {
                if let Ok(mut pending) = self.catalogs.lock() {
                    pending.entry(key).or_insert((epoch, catalog));
                }
            }
        }
    }
}

enum Report {
    Health((String, u32), u64, ReplicaHealth),
    Catalog((String, u32), u64, Catalog),
}

impl Report {
    fn command(&self, node_id: u64) -> Command {
        match self {
            Report::Health((server, slot), epoch, health) => Command::ReportHealth {
                server: server.clone(),
                slot: *slot,
                epoch: *epoch,
                health: health.clone(),
            },
            Report::Catalog((server, slot), epoch, catalog) => Command::ReportCatalog {
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
        if let Report::Catalog((server, _), _, catalog) = &report {
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
