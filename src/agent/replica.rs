//! One replica's life on this node: start (launch + initialize), probe with MCP ping,
//! restart with backoff after a failure, stop when told. It publishes its health on
//! every transition (state, breaker, restart count or last error), not on every probe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::breaker::{Breaker, Source};
use super::directory::{Directory, ReplicaHandle};
use super::reporter::Reports;
use super::restart::Restarts;
use crate::env::bugs::{self, Bug};
use crate::env::launcher::{Fence, McpLauncher, ReplicaId};
use crate::mcp::{Connection, McpError};
use crate::registry::{
    BreakerState, NodeId, ReplicaHealth, ReplicaState, ServerSpec, MAX_CATALOG_BYTES,
};

/// Longest wait for a server to start and answer initialize.
pub const INITIALIZE_TIMEOUT_MS: u64 = 10_000;
/// Longest a starting replica holds its turn (`max_starting_replicas`): one that takes
/// longer to answer initialize lets the next start, so that servers that hang at
/// start cannot hold up every other start on the node.
pub const START_TURN_MS: u64 = 2_000;
/// Consecutive failed probes, in multiples of `unhealthy_threshold`, after which a
/// replica that stopped answering is restarted.
const RESTART_AFTER_UNHEALTHY_ROUNDS: u32 = 2;

/// Which replica, under which assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaKey {
    pub server: String,
    pub slot: u32,
    pub epoch: u64,
    /// The revision that created the server (its incarnation).
    pub create_revision: u64,
    /// The server's transport revision this replica runs.
    pub transport_revision: u64,
}

/// The replica's spec as the registry holds it now: settings (health check, breaker,
/// restart policy) apply live; a transport change is a new replica (see the agent).
pub type Settings = watch::Receiver<ServerSpec>;

/// Set to `Some(grace)` to stop the replica: SIGTERM, then SIGKILL after `grace`.
pub type StopSignal = watch::Receiver<Option<Duration>>;

enum Ended {
    Stopped(Duration),
    Failed(String),
}

struct Replica {
    key: ReplicaKey,
    spec: ServerSpec,
    settings: Settings,
    reports: Arc<Reports>,
    tasks: TaskTracker,
    health: ReplicaHealth,
    /// Shared with the replica's handle in the directory: tool calls feed it too.
    breaker: Arc<Mutex<Breaker>>,
    restarts: Restarts,
}

impl Replica {
    /// Takes the newest settings, if they changed.
    fn refresh(&mut self) -> bool {
        if !self.settings.has_changed().unwrap_or(false) {
            return false;
        }
        let spec = self.settings.borrow_and_update().clone();
        self.with_breaker(|b| b.reconfigure(spec.circuit_breaker));
        self.restarts.reconfigure(spec.restart);
        // The transport stays the one this replica was started with.
        self.spec = ServerSpec {
            transport: self.spec.transport.clone(),
            ..spec
        };
        true
    }

    fn set_state(&mut self, state: ReplicaState) {
        self.health.state = state;
        self.publish();
    }

    fn publish(&mut self) {
        self.health.breaker = self.breaker_state();
        self.reports.publish(&self.key, self.health.clone());
    }

    fn with_breaker<T: Default>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        self.breaker
            .lock()
            .map(|mut b| f(&mut b))
            .unwrap_or_default()
    }

    fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .map_or(BreakerState::Closed, |mut b| b.state(Instant::now()))
    }
}

/// What a replica's task works with: how to start its server, the node's fence, and
/// where it reports and publishes itself.
#[derive(Clone)]
pub struct ReplicaEnv {
    pub launcher: Arc<dyn McpLauncher>,
    /// A permit is held while the server is launched and initialized.
    pub starts: Arc<Semaphore>,
    pub fence: Fence,
    pub reports: Arc<Reports>,
    pub directory: Arc<Directory>,
    /// Where the replica's calls spawn their cancellation notices.
    pub tasks: TaskTracker,
}

/// Runs replica `key` of `spec` until `stop` says so; then stops its server.
pub async fn run(
    node_id: NodeId,
    key: ReplicaKey,
    mut settings: Settings,
    env: ReplicaEnv,
    mut stop: StopSignal,
) {
    let ReplicaEnv {
        launcher,
        starts,
        fence,
        reports,
        directory,
        tasks,
    } = env;
    let spec = settings.borrow_and_update().clone();
    let mut replica = Replica {
        health: ReplicaHealth {
            node_id,
            transport_revision: key.transport_revision,
            state: ReplicaState::Starting,
            breaker: crate::registry::BreakerState::Closed,
            restarts: 0,
            last_error: None,
            probe_latency_ms: None,
        },
        breaker: Arc::new(Mutex::new(Breaker::new(spec.circuit_breaker))),
        restarts: Restarts::new(spec.restart),
        key,
        spec,
        settings,
        reports,
        tasks,
    };
    loop {
        replica.refresh();
        // A replica in crash-loop says so while it tries again.
        if replica.health.state != ReplicaState::CrashLoop {
            replica.set_state(ReplicaState::Starting);
        }
        // Its turn among the replicas this node starts (held for `START_TURN_MS` at
        // most); the initialize timeout counts from then.
        let mut permit = if bugs::active(Bug::UnboundedStarts) {
            None
        } else {
            tokio::select! {
                permit = starts.clone().acquire_owned() => Some(permit),
                _ = stop.wait_for(Option::is_some) => return,
            }
        };
        let timeout = Duration::from_millis(INITIALIZE_TIMEOUT_MS);
        let id = ReplicaId {
            server: replica.key.server.clone(),
            create_revision: replica.key.create_revision,
            slot: replica.key.slot,
        };
        let opened = {
            let open = Connection::open(
                launcher.as_ref(),
                &id,
                &replica.spec.transport,
                timeout,
                fence.clone(),
            );
            tokio::pin!(open);
            let turn_ends = tokio::time::sleep(Duration::from_millis(START_TURN_MS));
            tokio::pin!(turn_ends);
            loop {
                tokio::select! {
                    opened = &mut open => break opened,
                    _ = &mut turn_ends, if permit.is_some() => permit = None,
                    // Dropping the half-open connection kills its process group.
                    _ = stop.wait_for(Option::is_some) => return,
                }
            }
        };
        drop(permit);
        let ended = match opened {
            Ok(mut connection) => {
                tracing::info!(server = %replica.key.server, slot = replica.key.slot,
                    info = %connection.server_info, "replica started");
                let ended = serve(&mut replica, &mut connection, &directory, &mut stop).await;
                directory.withdraw(&replica.key.server, replica.key.slot, replica.key.epoch);
                let grace = match ended {
                    Ended::Stopped(grace) => grace,
                    Ended::Failed(_) => {
                        Duration::from_millis(crate::config::timing::FENCE_GRACE_MS)
                    }
                };
                connection.close(grace).await;
                ended
            }
            Err(error) => Ended::Failed(error.to_string()),
        };
        let error = match ended {
            Ended::Stopped(_) => return,
            Ended::Failed(error) => error,
        };
        replica.with_breaker(|b| b.record_failure(Source::Probe, Instant::now()));
        replica.refresh();
        let decision = replica.restarts.failed(Instant::now());
        tracing::warn!(server = %replica.key.server, slot = replica.key.slot, %error,
            delay_ms = decision.delay.as_millis() as u64, crash_loop = decision.crash_loop,
            "replica failed");
        replica.health.last_error = Some(error);
        replica.health.probe_latency_ms = None;
        replica.set_state(if decision.crash_loop {
            ReplicaState::CrashLoop
        } else {
            ReplicaState::Backoff
        });
        tokio::select! {
            _ = tokio::time::sleep(decision.delay) => {}
            _ = stop.wait_for(Option::is_some) => return,
        }
        replica.health.restarts = replica.health.restarts.saturating_add(1);
    }
}

/// Reports what a started replica offers, opens it to tool calls, and probes it until
/// it fails or is stopped.
async fn serve(
    replica: &mut Replica,
    connection: &mut Connection,
    directory: &Directory,
    stop: &mut StopSignal,
) -> Ended {
    if let Err(ended) = report_catalog_unless_stopped(replica, connection, stop).await {
        return ended;
    }
    publish_handle(replica, connection, directory);
    probe(replica, connection, directory, stop).await
}

/// Opens the replica to tool calls (again, with a new bulkhead size: calls in flight
/// on the old handle finish under the old one).
fn publish_handle(replica: &Replica, connection: &Connection, directory: &Directory) {
    directory.publish(Arc::new(ReplicaHandle::new(
        replica.key.server.clone(),
        replica.key.slot,
        replica.key.epoch,
        connection.upstream(replica.tasks.clone()),
        replica.breaker.clone(),
        replica.spec.max_concurrent_calls,
    )));
}

/// Lists what the replica offers and hands it to the reporter; an over-size catalog is
/// the replica's error.
async fn report_catalog(replica: &mut Replica, connection: &mut Connection) -> Result<(), String> {
    let timeout =
        Duration::from_millis(replica.spec.health_check.timeout_ms.max(CATALOG_TIMEOUT_MS));
    let catalog = connection
        .catalog(replica.key.transport_revision, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if catalog.size() > MAX_CATALOG_BYTES {
        return Err(format!(
            "the server offers a catalog of {} bytes, over the {MAX_CATALOG_BYTES}-byte cap",
            catalog.size()
        ));
    }
    replica.reports.publish_catalog(&replica.key, catalog);
    Ok(())
}

/// `report_catalog`, but a stop never waits for the lists in flight.
async fn report_catalog_unless_stopped(
    replica: &mut Replica,
    connection: &mut Connection,
    stop: &mut StopSignal,
) -> Result<(), Ended> {
    tokio::select! {
        reported = report_catalog(replica, connection) => reported.map_err(Ended::Failed),
        ended = stopped(stop) => Err(ended),
    }
}

/// Resolves once the replica is told to stop, with the grace it was given.
async fn stopped(stop: &mut StopSignal) -> Ended {
    let grace = stop.wait_for(Option::is_some).await;
    Ended::Stopped(grace.ok().and_then(|g| *g).unwrap_or_default())
}

/// Shortest wait for the server's lists.
const CATALOG_TIMEOUT_MS: u64 = 5_000;

/// Probes a started replica until it fails or is stopped.
async fn probe(
    replica: &mut Replica,
    connection: &mut Connection,
    directory: &Directory,
    stop: &mut StopSignal,
) -> Ended {
    let mut check = replica.spec.health_check;
    let mut interval = tokio::time::interval(Duration::from_millis(check.interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    let lists_changed = connection.lists_changed();
    loop {
        let mut relist = false;
        tokio::select! {
            _ = interval.tick() => {}
            changed = replica.settings.changed(), if replica.settings.has_changed().is_ok() => {
                // New settings apply at once, without a restart.
                let limit = replica.spec.max_concurrent_calls;
                if changed.is_ok() && replica.refresh() && replica.spec.max_concurrent_calls != limit {
                    publish_handle(replica, connection, directory);
                }
                if replica.spec.health_check != check {
                    check = replica.spec.health_check;
                    interval = tokio::time::interval(Duration::from_millis(check.interval_ms));
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                continue;
            }
            exit = connection.exited() => return Ended::Failed(exit),
            ended = stopped(stop) => return ended,
            _ = lists_changed.notified() => relist = true,
        }
        if relist {
            if let Err(ended) = report_catalog_unless_stopped(replica, connection, stop).await {
                return ended;
            }
            continue;
        }
        let timeout = Duration::from_millis(check.timeout_ms);
        let restart_after = check
            .unhealthy_threshold
            .saturating_mul(RESTART_AFTER_UNHEALTHY_ROUNDS);
        let before = replica.health.state;
        // A stop never waits for the ping in flight.
        let pinged = tokio::select! {
            pinged = connection.ping(timeout) => pinged,
            ended = stopped(stop) => return ended,
        };
        match pinged {
            Err(McpError::Exited(exit)) => return Ended::Failed(exit),
            Ok(latency) => {
                successes = successes.saturating_add(1);
                failures = 0;
                replica.with_breaker(|b| b.record_success(Source::Probe));
                replica.health.probe_latency_ms = Some(latency.as_millis() as u64);
                if replica.health.state != ReplicaState::Healthy
                    && successes >= check.healthy_threshold
                {
                    replica.health.state = ReplicaState::Healthy;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                successes = 0;
                replica.with_breaker(|b| b.record_failure(Source::Probe, Instant::now()));
                replica.health.last_error = Some(error.to_string());
                if failures >= restart_after {
                    return Ended::Failed(format!(
                        "{failures} health probes failed in a row; last: {error}"
                    ));
                }
                if replica.health.state != ReplicaState::Unhealthy
                    && failures >= check.unhealthy_threshold
                {
                    replica.health.state = ReplicaState::Unhealthy;
                }
            }
        }
        // Tool calls move the breaker too: any change since the last report goes out.
        if replica.health.state != before || replica.breaker_state() != replica.health.breaker {
            replica.publish();
        }
    }
}
