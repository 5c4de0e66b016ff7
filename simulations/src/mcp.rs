//! Simulated MCP servers behind the production launcher seam.
//!
//! A launch starts an in-process rmcp server on the node's host, speaking MCP over an
//! in-memory pipe, so the agent does the real initialize handshake and real pings.
//! While the faults last, the seed decides how each one misbehaves: it starts slowly,
//! crashes after a while, or hangs (stops answering with its pipe open). Afterwards every
//! new one behaves. Every running server is recorded in `Instances`, which the fencing
//! checker reads. Servers run on a process host of their own, as a real server runs
//! under its supervisor beside the node: a crashed node's servers take their time to
//! exit (some run on after their stdin closes), and only a stop or the supervisor's
//! deadline ends them. Stops take time too (a real SIGTERM grace).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use mcpfleet::env::launcher::{
    Fence, LaunchError, Launched, McpIo, McpLauncher, ReplicaId, ServerProcess,
};
use mcpfleet::registry::Transport;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rmcp::ServiceExt;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::watch;

/// How long a real supervisor gives its server between SIGTERM and SIGKILL when its
/// node is gone (never past the deadline).
const SUPERVISOR_GRACE_MS: u64 = 5_000;
/// Longest a misbehaving server runs before it crashes or hangs: a server launched just
/// before the faults end may still misbehave this long after.
pub const MAX_LIFETIME_MS: u64 = 5_000;
/// Bytes buffered in each direction of a server's pipe.
const PIPE_BYTES: usize = 64 * 1024;

/// The one tool of every simulated server: it records that call `id` ran (on which
/// node, as which replica) and answers `ran <id>`.
pub const RECORD_TOOL: &str = "record";

/// A server that answers initialize and ping (rmcp's defaults), lists one tool and runs
/// it, counting every run in `Instances`.
#[derive(Clone)]
struct SimServer {
    instances: Arc<Instances>,
    /// Which replica this server is: (server, slot).
    replica: (String, u32),
    /// Ends the server's process (see `Instances::crash_in_next_call`).
    crashed: Arc<tokio::sync::Notify>,
}

impl rmcp::ServerHandler for SimServer {
    fn get_info(&self) -> rmcp::model::InitializeResult {
        rmcp::model::InitializeResult::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let mut schema = rmcp::model::JsonObject::new();
        schema.insert("type".into(), "object".into());
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![
            rmcp::model::Tool::new(RECORD_TOOL, "records that a call ran", schema),
        ]))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let id = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("id"))
            .and_then(|id| id.as_str())
            .filter(|_| request.name == RECORD_TOOL)
            .ok_or_else(|| rmcp::ErrorData::invalid_params("record takes an id", None))?
            .to_string();
        if self.instances.calls_stuck(&self.replica) {
            // It answers pings, but its calls never come back (nor run).
            return std::future::pending().await;
        }
        self.instances.ran(&id);
        if self.instances.take_crash(&self.replica) {
            // The call ran; its answer never leaves: the process dies first.
            self.crashed.notify_one();
            return std::future::pending().await;
        }
        Ok(rmcp::model::CallToolResponse::Complete(
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(format!(
                "ran {id}"
            ))]),
        ))
    }
}

/// A server's life, run on the process host.
pub type ServerTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The MCP servers running anywhere in the simulation, by instance number.
#[derive(Default)]
pub struct Instances {
    running: Mutex<BTreeMap<u64, (u64, ReplicaId)>>,
    next: AtomicU64,
    /// Hands servers to the process host, which runs them.
    spawner: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ServerTask>>>,
    /// How many times each node has crashed: a server whose node crashed after its
    /// launch is left to its supervisor; one the live node dropped is killed at once.
    crashes: Mutex<BTreeMap<u64, u64>>,
    /// How many times each tool call (by its id) ran, on any server.
    runs: Mutex<BTreeMap<String, u32>>,
    /// Replicas, as (server, slot), whose servers answer pings but never a tool call.
    stuck: Mutex<std::collections::BTreeSet<(String, u32)>>,
    /// Replicas, as (server, slot), whose server crashes in its next tool call, after
    /// running it and before answering.
    crash_next: Mutex<std::collections::BTreeSet<(String, u32)>>,
    /// Every server launched from now on behaves, but runs on after its stdin closes and
    /// takes the whole grace to exit when stopped (its fence deadline still ends it).
    linger: AtomicBool,
    /// Per node and boot (its crash count): when each of its servers not yet answering
    /// was launched (by instance number), and the most there ever were at once within
    /// their turn (`START_TURN_MS`).
    starting: Mutex<BTreeMap<(u64, u64), Starting>>,
    next_start: AtomicU64,
}

impl Instances {
    /// Where launched servers go from now on: the process host's queue.
    pub fn run_servers_on(&self, spawner: tokio::sync::mpsc::UnboundedSender<ServerTask>) {
        *self.spawner.lock().unwrap_or_else(|e| e.into_inner()) = Some(spawner);
    }

    /// Called just before node `node` crashes.
    pub fn node_crashed(&self, node: u64) {
        *self
            .crashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node)
            .or_default() += 1;
    }

    fn crashes(&self, node: u64) -> u64 {
        let crashes = self.crashes.lock().unwrap_or_else(|e| e.into_inner());
        crashes.get(&node).copied().unwrap_or(0)
    }

    fn spawn(&self, task: ServerTask) {
        let spawner = self.spawner.lock().unwrap_or_else(|e| e.into_inner());
        match spawner.as_ref() {
            Some(spawner) => {
                let _ = spawner.send(task);
            }
            None => {
                tokio::spawn(task);
            }
        }
    }

    /// Servers launched from now on outlive their node's crash until stopped or fenced.
    pub fn linger_from_now_on(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// From now on, every server of `server`'s slot `slot` (running or launched later)
    /// answers pings but leaves every tool call unanswered.
    pub fn stick_calls(&self, server: &str, slot: u32) {
        self.stuck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((server.to_string(), slot));
    }

    /// The next tool call a server of `server`'s slot `slot` gets runs, and then the
    /// server crashes before it answers (once).
    pub fn crash_in_next_call(&self, server: &str, slot: u32) {
        self.crash_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((server.to_string(), slot));
    }

    /// Whether this call is the one `replica`'s server crashes in.
    fn take_crash(&self, replica: &(String, u32)) -> bool {
        self.crash_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(replica)
    }

    fn calls_stuck(&self, replica: &(String, u32)) -> bool {
        self.stuck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(replica)
    }

    fn ran(&self, call: &str) {
        *self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(call.to_string())
            .or_default() += 1;
    }

    /// How many times each tool call ran.
    pub fn runs(&self) -> BTreeMap<String, u32> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, ReplicaId)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (replica, node) pairs of every running server.
    pub fn running(&self) -> Vec<(ReplicaId, u64)> {
        self.lock()
            .values()
            .map(|(node, replica)| (replica.clone(), *node))
            .collect()
    }

    /// A server of `node` is launched: it starts until the node reads its first answer
    /// (to initialize), or the node lets it go, when the returned guard drops. Servers
    /// left behind by an earlier boot of the node do not count against this one.
    fn starting(self: &Arc<Self>, node: u64) -> StartingGuard {
        let key = (node, self.crashes(node));
        let number = self.next_start.fetch_add(1, Ordering::Relaxed);
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let turn = Duration::from_millis(mcpfleet::agent::START_TURN_MS);
        let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        let (launched, most) = starting.entry(key).or_default();
        launched.insert(number, now);
        // A server still starting after its turn no longer holds one.
        let in_turn = launched.values().filter(|at| now < **at + turn).count();
        *most = (*most).max(in_turn);
        StartingGuard {
            instances: self.clone(),
            key,
            number,
        }
    }

    /// No node ever started more than `limit` servers at once (a node that launches
    /// every replica it takes over together starves its host: on real processes its
    /// Raft heartbeats time out, its lease lapses and its replicas are stopped).
    pub fn check_starts(&self, limit: usize) -> Result<(), String> {
        let starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        match starting.iter().find(|(_, (_, most))| *most > limit) {
            Some(((node, _), (_, most))) => Err(format!(
                "starts: node {node} started {most} servers at once, over its limit of {limit}"
            )),
            None => Ok(()),
        }
    }

    /// The fencing check: no replica slot runs on two nodes at once.
    pub fn check_fencing(&self) -> Result<(), String> {
        let mut nodes: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        for (replica, node) in self.running() {
            if let Some(other) = nodes.insert(replica.clone(), node) {
                if other != node {
                    return Err(format!(
                        "fencing: slot {} of {:?} (created at revision {}) runs on nodes {other} and {node} at once",
                        replica.slot, replica.server, replica.create_revision
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Removes its server from `Instances` when the server's task ends, however it ends
/// (stopped, crashed, or its host crashed).
struct InstanceGuard {
    instances: Arc<Instances>,
    number: u64,
    exited: watch::Sender<Option<String>>,
    how: String,
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        self.instances.lock().remove(&self.number);
        let _ = self.exited.send(Some(std::mem::take(&mut self.how)));
    }
}

/// A server's end of its pipe. Once `frozen`, reads and writes never complete (a hung
/// process with its pipes open). With a `delay`, each answer leaves that long after the
/// server wrote it (a slow server).
struct Freezable {
    inner: DuplexStream,
    frozen: Arc<AtomicBool>,
    delay: Option<Duration>,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The node's end of a server's stdout: the server counts as starting until the node
/// has read its first bytes (the answer to initialize).
struct UntilAnswered<R> {
    inner: R,
    starting: Option<StartingGuard>,
}

impl<R: AsyncRead + Unpin> AsyncRead for UntilAnswered<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            self.starting = None;
        }
        polled
    }
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        if let Some(delay) = self.delay {
            let sleep = self
                .waiting
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        // The next answer waits its own delay.
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.waiting = None;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How one launched server behaves.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Healthy,
    CrashAfter(Duration),
    HangAfter(Duration),
    /// Answers every message this late.
    Slow(Duration),
}

/// One node boot's starting servers: when each was launched (by number), and the most
/// there ever were at once within their turn.
type Starting = (BTreeMap<u64, Duration>, usize);

/// One server of a node starting, until it drops.
struct StartingGuard {
    instances: Arc<Instances>,
    key: (u64, u64),
    number: u64,
}

impl Drop for StartingGuard {
    fn drop(&mut self) {
        let mut starting = self
            .instances
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((launched, _)) = starting.get_mut(&self.key) {
            launched.remove(&self.number);
        }
    }
}

/// One node's launcher (one per boot, seeded from the node's seed).
pub struct SimLauncher {
    node: u64,
    rng: Mutex<SmallRng>,
    instances: Arc<Instances>,
    /// Launches before this simulated time may misbehave.
    misbehave_until: Duration,
}

impl SimLauncher {
    pub fn new(
        node: u64,
        seed: u64,
        instances: Arc<Instances>,
        misbehave_until: Duration,
    ) -> SimLauncher {
        SimLauncher {
            node,
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x6d63_7073_6572_7665)),
            instances,
            misbehave_until,
        }
    }

    fn draw(&self) -> (Duration, Behaviour, Duration, bool) {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let start = Duration::from_millis(rng.gen_range(5..200));
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let misbehaving = now < self.misbehave_until;
        // How long it takes to exit once told to (a real SIGTERM grace), and whether
        // it runs on once its stdin closes.
        let exit_delay = Duration::from_millis(if misbehaving {
            rng.gen_range(0..=SUPERVISOR_GRACE_MS)
        } else {
            rng.gen_range(0..50)
        });
        let lingers = misbehaving && rng.gen_bool(0.5);
        // Told so by the scenario: it runs on, and takes the whole grace to exit.
        if self.instances.linger.load(Ordering::Relaxed) {
            let exit_delay = Duration::from_millis(SUPERVISOR_GRACE_MS);
            return (start, Behaviour::Healthy, exit_delay, true);
        }
        let lifetime = Duration::from_millis(rng.gen_range(300..MAX_LIFETIME_MS));
        let behaviour = match rng.gen_range(0..100) {
            _ if now >= self.misbehave_until => Behaviour::Healthy,
            0..15 => Behaviour::CrashAfter(lifetime),
            15..25 => Behaviour::HangAfter(lifetime),
            // Slow to start: answers initialize only after a few seconds.
            25..35 => {
                let start = start + Duration::from_secs(3);
                return (start, Behaviour::Healthy, exit_delay, lingers);
            }
            35..45 => Behaviour::Slow(Duration::from_millis(rng.gen_range(20..300))),
            _ => Behaviour::Healthy,
        };
        (start, behaviour, exit_delay, lingers)
    }
}

#[async_trait]
impl McpLauncher for SimLauncher {
    async fn launch(
        &self,
        replica: &ReplicaId,
        _transport: &Transport,
        fence: Fence,
    ) -> Result<Launched, LaunchError> {
        let (start, behaviour, exit_delay, lingers) = self.draw();
        let (client_end, server_end) = tokio::io::duplex(PIPE_BYTES);
        let frozen = Arc::new(AtomicBool::new(false));
        let io = Freezable {
            inner: server_end,
            frozen: frozen.clone(),
            delay: match behaviour {
                Behaviour::Slow(delay) => Some(delay),
                _ => None,
            },
            waiting: None,
        };
        let number = self.instances.next.fetch_add(1, Ordering::Relaxed);
        self.instances
            .lock()
            .insert(number, (self.node, replica.clone()));
        let (exited_tx, exited) = watch::channel(None);
        let mut guard = InstanceGuard {
            instances: self.instances.clone(),
            number,
            exited: exited_tx,
            how: "process exited with code 1: simulated crash".into(),
        };
        let (stop_tx, mut stop_rx) = watch::channel(None::<Duration>);
        let fence = on_the_simulation_clock(fence);
        let crashed = Arc::new(tokio::sync::Notify::new());
        let handler = SimServer {
            instances: self.instances.clone(),
            replica: (replica.server.clone(), replica.slot),
            crashed: crashed.clone(),
        };
        let life = async move {
            tokio::time::sleep(start).await;
            let Ok(service) = handler.serve(io).await else {
                return "process exited with code 1: no handshake".to_string();
            };
            match behaviour {
                Behaviour::Healthy | Behaviour::Slow(_) => {
                    let _ = service.waiting().await;
                    if lingers {
                        // Its stdin closed, and it runs on: only a stop or the fence
                        // ends it.
                        std::future::pending::<()>().await;
                    }
                    "process exited with code 0".to_string()
                }
                Behaviour::CrashAfter(lifetime) => {
                    tokio::select! {
                        _ = tokio::time::sleep(lifetime) => "process exited with code 1: simulated crash".to_string(),
                        _ = service.waiting() => "process exited with code 0".to_string(),
                    }
                }
                Behaviour::HangAfter(lifetime) => {
                    tokio::time::sleep(lifetime).await;
                    frozen.store(true, Ordering::Relaxed);
                    std::future::pending::<String>().await
                }
            }
        };
        let server = async move {
            tokio::select! {
                how = life => how,
                _ = crashed.notified() => "process exited with code 1: crashed during a call".to_string(),
            }
        };
        // The server runs on the simulation's process host, not the node's: like a real
        // server under its supervisor, it outlives a crash of its node until it is
        // stopped or the supervisor's deadline passes.
        self.instances.spawn(Box::pin(async move {
            tokio::select! {
                how = server => guard.how = how,
                _ = fence_deadline(fence.clone()) => {
                    guard.how = "process killed by signal 9: the node's deadline passed".into();
                }
                grace = stop_requested(&mut stop_rx) => {
                    // Told to stop (SIGTERM, SIGKILL after the grace) or, with the node
                    // gone, by the supervisor (its grace, never past the deadline).
                    tokio::select! {
                        _ = tokio::time::sleep(exit_delay.min(grace)) => {}
                        _ = fence_deadline(fence) => {}
                    }
                    guard.how = "stopped".into();
                }
            }
            drop(guard);
        }));
        let (reader, writer) = tokio::io::split(client_end);
        let reader = UntilAnswered {
            inner: reader,
            starting: Some(self.instances.starting(self.node)),
        };
        Ok(Launched {
            io: McpIo::Streams {
                reader: Box::pin(reader),
                writer: Box::pin(writer),
            },
            process: Some(Box::new(SimProcess {
                stop: stop_tx,
                exited,
                instances: self.instances.clone(),
                node: self.node,
                crashes: self.instances.crashes(self.node),
            })),
        })
    }
}

/// The grace of a stop request; the supervisor's grace once the node is gone (the
/// sender dropped).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    let requested = stop.wait_for(Option::is_some).await.map(|grace| *grace);
    match requested {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::from_millis(SUPERVISOR_GRACE_MS),
    }
}

/// A fence deadline on the simulation's clock (time since it started). Hosts keep
/// their own tokio clocks, which a restart resets, so the node's instants mean nothing
/// on the process host: as the real node writes its deadlines on the host's monotonic
/// clock, this one writes them as simulated time.
type SimFence = watch::Receiver<Option<Duration>>;

/// Forwards `fence`'s deadlines, as simulated time, from a task on the node's host: it
/// dies with the node, and the last deadline then stands.
fn on_the_simulation_clock(mut fence: Fence) -> SimFence {
    let to_sim = |deadline: Option<tokio::time::Instant>| {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        deadline.map(|until| now + until.saturating_duration_since(tokio::time::Instant::now()))
    };
    let (sender, receiver) = watch::channel(to_sim(*fence.borrow_and_update()));
    tokio::spawn(async move {
        while fence.changed().await.is_ok() {
            let deadline = to_sim(*fence.borrow_and_update());
            if sender.send(deadline).is_err() {
                return;
            }
        }
        // The agent is gone but the node runs on (it is shutting down): keep the last
        // deadline in force by keeping the sender.
        std::future::pending::<()>().await;
    });
    receiver
}

/// Resolves once the fence's deadline has passed (never, with the IgnoreFenceDeadline
/// bug): what the real supervisor does.
async fn fence_deadline(mut fence: SimFence) {
    if mcpfleet::env::bugs::active(mcpfleet::env::bugs::Bug::IgnoreFenceDeadline) {
        return std::future::pending().await;
    }
    loop {
        let Some(deadline) = *fence.borrow_and_update() else {
            return;
        };
        let now = turmoil::sim_elapsed().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(deadline.saturating_sub(now)) => {
                if *fence.borrow() == Some(deadline) {
                    return;
                }
            }
            changed = fence.changed() => {
                if changed.is_err() {
                    // No more renewals: the last deadline stands.
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    tokio::time::sleep(deadline.saturating_sub(now)).await;
                    return;
                }
            }
        }
    }
}

struct SimProcess {
    /// Dropped with the node: the server's supervisor then stops it on its own.
    stop: watch::Sender<Option<Duration>>,
    exited: watch::Receiver<Option<String>>,
    instances: Arc<Instances>,
    node: u64,
    /// The node's crash count at launch.
    crashes: u64,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        // Dropped by a live node (a start given up half-way): killed at once, as the
        // real launcher's drop SIGKILLs the group. Dropped because the node crashed:
        // the sender goes, and the supervisor takes over.
        if self.instances.crashes(self.node) == self.crashes {
            self.stop.send_replace(Some(Duration::ZERO));
        }
    }
}

#[async_trait]
impl ServerProcess for SimProcess {
    async fn exited(&mut self) -> String {
        match self.exited.wait_for(Option::is_some).await {
            Ok(how) => how.clone().unwrap_or_default(),
            Err(_) => "process exited".into(),
        }
    }

    async fn stop(&mut self, grace: Duration) {
        self.stop.send_replace(Some(grace));
        let _ = self.exited.wait_for(Option::is_some).await;
    }
}
