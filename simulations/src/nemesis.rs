//! The nemesis on real processes: three to five `mcpfleet serve` processes, the
//! simulator's workload and tool callers over real sockets, and faults from one seed
//! (SIGKILL then restart, SIGSTOP then SIGCONT, a node cut off from its peers, a slow
//! link), one or two at a time, aimed at the leader half of the time. At the end every
//! fault is healed, and the history goes through the simulator's own checkers:
//! linearizable per server name, no acknowledged write lost, no tool call run twice;
//! and no replica slot had two lives at once.
//!
//! With `namespaces`, every node runs in a network namespace of its own, joined to
//! the others by a veth pair on one bridge, all inside a private namespace of the
//! nemesis (`unshare -n`), so nothing on the machine's own network changes. A cut is
//! real: each side's neighbour entry for the other names a link-layer address that no
//! interface has, so their packets vanish without an error, as on a broken link. A slow link is `tc netem` delay and loss where the
//! kernel has netem, and a `tbf` rate limit with a deep queue where it has not.
//! Without namespaces the nodes share loopback, and only kills and pauses are made.
//!
//! The schedule (which fault, when, for how long, at the leader or at a random node)
//! comes from the seed; real processes are not deterministic, so a replay repeats the
//! schedule, not the interleaving.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mcpfleet::proto::v1 as pb;
use mcpfleet::proto::v1::registry_client::RegistryClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::calls::{self, check_calls, CallLog, CallOutcome, CallRecord, CallStats};
use crate::checkers::{check_history, FinalState, HistoryStats};
use crate::workload::{self, Event, History};

/// The bridge's own address: where the clients connect from.
const BRIDGE_ADDR: &str = "10.77.0.254";
/// The gRPC port of every node in its own namespace.
const NODE_PORT: u16 = 7700;
/// How long the cluster has, after the faults are healed, to elect a leader and
/// agree on one registry.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long a probe of one node (its status, for the leader) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Servers of one replica each that run `tests/servers/recorder.py`, whose processes
/// log when they start and tick, so that two lives of one slot at once are seen.
const FENCED_SERVERS: u32 = 3;
/// The recorder's tick (its `TICK_MS`).
const TICK_MS: u64 = 20;
/// One call in this many is answered late by the tool server.
const SLOW_EVERY: u32 = 10;
/// One call in this many ends the tool server's replica before it answers.
const CRASH_EVERY: u32 = 40;
/// How long, once the registry has settled, a tool call through each node may take to
/// succeed (its replicas restart and turn healthy, breakers close).
const CALLS_LIVE_LIMIT: Duration = Duration::from_secs(30);
/// The recorder, from this crate's source tree.
const RECORDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/servers/recorder.py");

#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: u64,
    pub duration: Duration,
    pub seed: u64,
    pub clients: u32,
    /// Clients that call the recorder's tool through random nodes.
    pub callers: u32,
    /// How many server names the clients work on.
    pub keys: usize,
    /// The program each node runs: `mcpfleet`, or a build with a bug switched on.
    pub binary: PathBuf,
    /// Extra environment for every node (the bug to switch on).
    pub node_env: Vec<(String, String)>,
    /// Nodes in namespaces of their own, with cuts and slow links; the caller is
    /// inside a private network namespace already.
    pub namespaces: bool,
    /// Data dirs, node logs and, on a failure, the history.
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    Pause,
    Cut,
    Slow,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Cut => "cut",
            FaultKind::Slow => "slow",
        }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Report {
    pub stats: Option<HistoryStats>,
    pub calls: Option<CallStats>,
    pub faults: BTreeMap<FaultKind, u32>,
    /// Times two faults were held at once (on two nodes).
    pub overlapping: u32,
    /// Faults aimed at the node that led when they began.
    pub at_leader: u32,
    pub failure: Option<String>,
    /// How a slow link was made, where it was.
    pub slow_link: Option<&'static str>,
    /// The Raft term at the end: how many elections the faults caused.
    pub term: Option<u64>,
    /// Fencing: the recorder processes seen, and the shortest time from one life's
    /// last tick to the start of the next life of the same slot (on another node, or
    /// a restart on the same one).
    pub slot_lives: usize,
    pub shortest_gap: Option<Duration>,
}

impl Report {
    pub fn summary(&self, options: &Options) -> String {
        let mut line = format!(
            "nemesis: {} nodes, {} s, seed {}, {} server names, {}: ",
            options.nodes,
            options.duration.as_secs(),
            options.seed,
            options.keys,
            if options.namespaces {
                "a network namespace per node"
            } else {
                "loopback"
            }
        );
        match &self.stats {
            Some(stats) => {
                let _ = write!(
                    line,
                    "{} operations ({} acknowledged writes, {} indeterminate); ",
                    stats.operations, stats.acknowledged_writes, stats.unknown_outcomes
                );
            }
            None => line.push_str("history not checked; "),
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.name()))
            .collect();
        if let Some(calls) = &self.calls {
            let _ = write!(
                line,
                "{} tool calls ({} answered, {} after the faults), none ran twice; ",
                calls.calls, calls.done, calls.after_settle
            );
        }
        let _ = write!(
            line,
            "faults: {} ({} at the leader, {} times two at once)",
            faults.join(", "),
            self.at_leader,
            self.overlapping
        );
        let _ = write!(
            line,
            "; {} replica lives of {FENCED_SERVERS} one-slot servers",
            self.slot_lives
        );
        if let Some(gap) = self.shortest_gap {
            let _ = write!(
                line,
                " (shortest gap between two lives of a slot: {} ms)",
                gap.as_millis()
            );
        }
        if let Some(term) = self.term {
            let _ = write!(line, "; term {term} at the end");
        }
        if let Some(how) = self.slow_link {
            let _ = write!(line, "; slow links by {how}");
        }
        line
    }
}

/// One node: its process, its namespace's holder, and how to start it again.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) addr: String,
    args: Vec<String>,
    log: PathBuf,
    /// The process that keeps the node's network namespace alive.
    holder: Option<Child>,
    pub(crate) child: Option<Child>,
    paused: bool,
}

impl Node {
    pub(crate) fn start(&mut self, options: &Options) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let mut command = match &self.holder {
            Some(holder) => {
                let mut command = Command::new("nsenter");
                command
                    .args(["-t", &holder.id().to_string(), "-n", "--"])
                    .arg(&options.binary);
                command
            }
            None => Command::new(&options.binary),
        };
        let child = command
            .args(&self.args)
            .envs(options.node_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start node {}: {e}", self.id))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Runs `ip` or `tc` inside the node's namespace.
    fn in_namespace(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let holder = self.holder.as_ref().ok_or("no namespace")?;
        let mut all = vec!["-t".to_string(), holder.id().to_string(), "-n".into()];
        all.push(program.into());
        all.extend(args.iter().map(|a| a.to_string()));
        command(
            "nsenter",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

fn command(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn node_ip(id: u64) -> String {
    format!("10.77.0.{id}")
}

/// A free port on loopback (the kernel's choice; it is released at once).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// The bridge, and a namespace per node joined to it.
fn make_network(options: &Options, nodes: &mut [Node]) -> Result<(), String> {
    command("ip", &["link", "set", "lo", "up"])?;
    command("ip", &["link", "add", "nmbr", "type", "bridge"])?;
    command(
        "ip",
        &["addr", "add", &format!("{BRIDGE_ADDR}/24"), "dev", "nmbr"],
    )?;
    command("ip", &["link", "set", "nmbr", "up"])?;
    // The holders outlive the run by a margin, and no longer, if the nemesis dies.
    let hold = (options.duration + SETTLE_LIMIT * 3).as_secs().to_string();
    for node in nodes.iter_mut() {
        let holder = Command::new("unshare")
            .args(["-n", "sleep", &hold])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let pid = holder.id().to_string();
        node.holder = Some(holder);
        // The namespace exists once unshare has made it and exec'd sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
        {
            if Instant::now() > deadline {
                return Err(format!("node {}: no namespace of its own", node.id));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let outside = format!("nm{}", node.id);
        let inside = format!("nm{}p", node.id);
        command(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        )?;
        command("ip", &["link", "set", &inside, "netns", &pid])?;
        command("ip", &["link", "set", &outside, "master", "nmbr", "up"])?;
        let ip = format!("{}/24", node_ip(node.id));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &inside, "name", "eth0"],
            vec!["addr", "add", &ip, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
        ] {
            node.in_namespace("ip", &args)?;
        }
    }
    Ok(())
}

/// Starts every node; they form one cluster from `--initial-cluster`.
pub(crate) fn start_nodes(options: &Options) -> Result<Vec<Node>, String> {
    let mut addrs = Vec::new();
    for id in 1..=options.nodes {
        addrs.push(if options.namespaces {
            format!("{}:{NODE_PORT}", node_ip(id))
        } else {
            format!("127.0.0.1:{}", free_port()?)
        });
    }
    let initial: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let data = options.dir.join(format!("node{id}"));
        // In its own namespace a node has loopback to itself for /mcp.
        let http = if options.namespaces {
            "127.0.0.1:7800".to_string()
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
        let mut args: Vec<String> = [
            "serve",
            "--id",
            &id.to_string(),
            "--listen",
            addr,
            "--data",
            &data.display().to_string(),
            "--http",
            &http,
            "--initial-cluster",
            &initial.join(","),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if options.namespaces {
            // A private network of the nemesis's own: no TLS or tokens to set up.
            args.push("--insecure".into());
        }
        nodes.push(Node {
            id,
            addr: addr.clone(),
            args,
            log: options.dir.join(format!("node{id}.log")),
            holder: None,
            child: None,
            paused: false,
        });
    }
    if options.namespaces {
        make_network(options, &mut nodes)?;
    }
    for node in &mut nodes {
        node.start(options)?;
    }
    Ok(nodes)
}

pub(crate) fn client_of(addr: &str) -> RegistryClient<Channel> {
    let channel = mcpfleet::env::network::endpoint(addr)
        .expect("the nemesis's addresses are valid")
        .connect_lazy();
    RegistryClient::new(channel)
}

/// The leader as the running nodes report it, if one answers in time.
pub(crate) async fn leader(nodes: &[Node]) -> Option<u64> {
    for node in nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
        let mut client = client_of(&node.addr);
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.cluster_status(pb::ClusterStatusRequest::default()),
        )
        .await;
        if let Ok(Ok(status)) = answer {
            if let Some(leader) = status.into_inner().leader_id {
                return Some(leader);
            }
        }
    }
    None
}

/// How a slow link is made on this kernel: netem if it has it.
fn slow_link(node: &Node) -> Result<&'static str, String> {
    let netem = [
        "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "150ms", "50ms", "loss", "5%",
    ];
    if node.in_namespace("tc", &netem).is_ok() {
        return Ok("netem (150 ms ± 50 ms delay, 5% loss)");
    }
    let tbf = [
        "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "64kbit", "burst", "4kbit",
        "latency", "800ms",
    ];
    node.in_namespace("tc", &tbf)?;
    Ok("tbf (64 kbit/s with up to 800 ms of queue)")
}

/// A link-layer address no interface has: frames sent to it cross the bridge and
/// are dropped by every port, as on a broken link.
const NOWHERE: &str = "02:00:00:00:00:01";

/// Cuts `target` off from every other node, both ways (clients still reach it): each
/// side's neighbour entry for the other points nowhere, so their packets vanish with
/// no error, and connections time out as they would across a real partition. A heal
/// leaves the pairs with a node in `still_cut` as they are.
fn cut(nodes: &[Node], target: u64, heal: bool, still_cut: &[u64]) -> Result<(), String> {
    let node = |id: u64| &nodes[id as usize - 1];
    let others = nodes
        .iter()
        .filter(|n| n.id != target && !(heal && still_cut.contains(&n.id)));
    for other in others {
        for (from, to) in [(target, other.id), (other.id, target)] {
            let ip = node_ip(to);
            let args: Vec<&str> = if heal {
                vec!["neigh", "del", &ip, "dev", "eth0"]
            } else {
                vec![
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    NOWHERE,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ]
            };
            node(from).in_namespace("ip", &args)?;
        }
    }
    Ok(())
}

/// Makes fault `kind` at `target`; returns how a slow link was made.
fn inject(
    nodes: &mut [Node],
    kind: FaultKind,
    target: u64,
) -> Result<Option<&'static str>, String> {
    let at = target as usize - 1;
    match kind {
        FaultKind::Kill => nodes[at].kill(),
        FaultKind::Pause => {
            nodes[at].signal("STOP");
            nodes[at].paused = true;
        }
        FaultKind::Cut => cut(nodes, target, false, &[])?,
        FaultKind::Slow => return slow_link(&nodes[at]).map(Some),
    }
    Ok(None)
}

/// Undoes fault `kind` at `target`, while the nodes in `still_cut` stay cut off.
fn heal(
    nodes: &mut [Node],
    options: &Options,
    kind: FaultKind,
    target: u64,
    still_cut: &[u64],
) -> Result<(), String> {
    let at = target as usize - 1;
    match kind {
        FaultKind::Kill => nodes[at].start(options),
        FaultKind::Pause => {
            nodes[at].signal("CONT");
            nodes[at].paused = false;
            Ok(())
        }
        FaultKind::Cut => cut(nodes, target, true, still_cut),
        FaultKind::Slow => nodes[at].in_namespace("tc", &["qdisc", "del", "dev", "eth0", "root"]),
    }
}

/// The registry once every node agrees: the servers and revision a linearizable list
/// gives, which each node's own (stale) list must also give.
async fn settled_state(nodes: &[Node]) -> Result<FinalState, String> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut states = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let stale = i > 0;
            match list(&node.addr, stale).await {
                Ok(state) => states.push(state),
                Err(error) => {
                    last = format!("node {}: {error}", node.id);
                    break;
                }
            }
        }
        if states.len() == nodes.len() {
            let first = &states[0];
            if states.iter().all(|s| s.servers == first.servers) {
                return Ok(first.clone());
            }
            last = "the nodes' registries differ".into();
        }
    }
    Err(format!(
        "the cluster did not settle within {SETTLE_LIMIT:?} after the faults: {last}"
    ))
}

async fn list(addr: &str, stale: bool) -> Result<FinalState, String> {
    let mut client = client_of(addr);
    let request = pb::ListServersRequest {
        stale,
        ..Default::default()
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), client.list_servers(request))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|status| status.message().to_string())?
        .into_inner();
    let servers = answer
        .servers
        .iter()
        .filter_map(|server| {
            let name = server.spec.as_ref()?.name.clone();
            Some((name, workload::value_of(server)?))
        })
        .collect();
    Ok(FinalState {
        revision: answer.revision,
        servers,
    })
}

/// Runs the nemesis; the report says what it saw and any violation.
pub async fn run(options: &Options) -> Result<Report, String> {
    std::fs::create_dir_all(&options.dir).map_err(|e| e.to_string())?;
    let mut nodes = start_nodes(options)?;
    let started = Instant::now();
    let history: History = Rc::new(RefCell::new(Vec::new()));
    let call_log: CallLog = Rc::default();
    let addrs: Rc<[String]> = nodes.iter().map(|n| n.addr.clone()).collect();
    let connect = move |node: u64| client_of(&addrs[node as usize - 1]);
    let workload = tokio::task::LocalSet::new();
    let clock = move || started.elapsed();
    let ids: Vec<u64> = (1..=options.nodes).collect();
    let keys: Rc<[String]> = workload::key_names(options.keys).into();
    for id in 0..options.clients {
        let plan = workload::ClientPlan {
            id,
            seed: options.seed,
            nodes: ids.clone(),
            keys: keys.clone(),
            until: options.duration,
        };
        let (history, connect) = (history.clone(), connect.clone());
        workload.spawn_local(async move {
            if let Err(error) = workload::run_client(plan, history, clock, connect).await {
                eprintln!("client {id}: {error}");
            }
        });
    }
    let records = options.dir.join("records");
    let tool_records = records.join(calls::TOOL_SERVER);
    for id in 0..options.callers {
        let plan = calls::CallerPlan {
            id,
            seed: options.seed,
            nodes: ids.clone(),
            times: calls::CallerTimes {
                until: options.duration,
                limit: options.duration,
                faults_end: options.duration,
            },
            register: (id == 0).then(|| tool_server(&tool_records)),
        };
        let (log, connect) = (call_log.clone(), connect.clone());
        workload.spawn_local(async move {
            // The cluster's settling is checked after the faults, not by the callers.
            if let Err(error) = calls::run_caller(plan, Rc::default(), log, clock, connect).await {
                eprintln!("caller {id}: {error}");
            }
        });
    }
    let mut report = Report {
        stats: None,
        calls: None,
        faults: BTreeMap::new(),
        overlapping: 0,
        at_leader: 0,
        failure: None,
        slow_link: None,
        term: None,
        slot_lives: 0,
        shortest_gap: None,
    };
    std::fs::create_dir_all(&tool_records)
        .map_err(|e| format!("{}: {e}", tool_records.display()))?;
    add_fenced_servers(&nodes, &records).await?;
    let mut schedule = SmallRng::seed_from_u64(options.seed ^ 0x006e_656d_6573_6973);
    let kinds: &[FaultKind] = if options.namespaces {
        &[
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Cut,
            FaultKind::Slow,
        ]
    } else {
        &[FaultKind::Kill, FaultKind::Pause]
    };
    let faults = async {
        // The first faults wait for the cluster to form and the clients to start.
        tokio::time::sleep(Duration::from_secs(3)).await;
        while started.elapsed() + Duration::from_secs(6) < options.duration {
            // One fault, or a third of the time two at once on two nodes.
            let count = if schedule.gen_ratio(1, 3) { 2 } else { 1 };
            let mut active: Vec<(FaultKind, u64)> = Vec::new();
            for _ in 0..count {
                let kind = kinds[schedule.gen_range(0..kinds.len())];
                let aim_at_leader = schedule.gen_bool(0.5);
                let random = schedule.gen_range(1..=options.nodes);
                let leader = if aim_at_leader {
                    leader(&nodes).await
                } else {
                    None
                };
                let mut target = leader.unwrap_or(random);
                // A node takes one fault at a time: the next node instead.
                while active.iter().any(|(_, t)| *t == target) {
                    target = target % options.nodes + 1;
                }
                if leader == Some(target) {
                    report.at_leader += 1;
                }
                *report.faults.entry(kind).or_default() += 1;
                if let Some(how) = inject(&mut nodes, kind, target)? {
                    report.slow_link = Some(how);
                }
                active.push((kind, target));
            }
            if active.len() > 1 {
                report.overlapping += 1;
            }
            let hold = Duration::from_millis(schedule.gen_range(1_000..5_000));
            let quiet = Duration::from_millis(schedule.gen_range(500..3_000));
            tokio::time::sleep(hold).await;
            while let Some((kind, target)) = active.pop() {
                let still_cut: Vec<u64> = active
                    .iter()
                    .filter(|(k, _)| *k == FaultKind::Cut)
                    .map(|(_, t)| *t)
                    .collect();
                heal(&mut nodes, options, kind, target, &still_cut)?;
            }
            tokio::time::sleep(quiet).await;
        }
        Ok::<(), String>(())
    };
    let faults = workload.run_until(faults).await;
    // The clients stop at `duration`, each after at most its own timeout.
    workload.await;
    faults?;
    let events: Vec<Event> = history.borrow().clone();
    let final_state = settled_state(&nodes).await;
    // With no callers there is no tool server; with no settled registry, no point.
    let after = if options.callers > 0 && final_state.is_ok() {
        calls_after_faults(&nodes, clock).await
    } else {
        Ok(Vec::new())
    };
    let after_count = after.as_ref().map_or(0, Vec::len);
    call_log
        .borrow_mut()
        .extend(after.iter().flatten().cloned());
    let mut client = client_of(&nodes[0].addr);
    if let Ok(Ok(status)) = tokio::time::timeout(
        PROBE_TIMEOUT,
        client.cluster_status(pb::ClusterStatusRequest::default()),
    )
    .await
    {
        report.term = Some(status.into_inner().term);
    }
    let checked = final_state
        .and_then(|state| check_history(&events, Some(&state)))
        .and_then(|stats| {
            let runs = tool_runs(&tool_records)?;
            let mut calls = check_calls(&call_log.borrow(), &runs, None, options.duration, &[])?;
            after?;
            calls.after_settle = after_count;
            report.calls = Some(calls);
            let (lives, shortest) = check_slots(&records)?;
            report.slot_lives = lives;
            report.shortest_gap = shortest;
            Ok(stats)
        });
    match checked {
        Ok(stats) => report.stats = Some(stats),
        Err(violation) => {
            save_history(&options.dir, &events)?;
            report.failure = Some(violation);
        }
    }
    Ok(report)
}

/// The tool server of the callers: the simulator's spec, with the recorder as its
/// command, logging its calls into `dir`. Every `SLOW_EVERY`th call a replica runs
/// answers after the callers' deadline, and every `CRASH_EVERY`th call ends the
/// replica before it answers: either way the call has run, and its caller is told it
/// failed, so it must not run again on the other replica.
fn tool_server(dir: &Path) -> pb::PutServerRequest {
    let mut request = calls::tool_server();
    if let Some(spec) = request.spec.as_mut() {
        let misbehave = [
            ("SLOW_EVERY", SLOW_EVERY.to_string()),
            ("SLOW_MS", (calls::CALL_TIMEOUT_MS + 150).to_string()),
            ("CRASH_EVERY", CRASH_EVERY.to_string()),
        ];
        spec.transport = Some(recorder(dir, &misbehave));
    }
    request
}

/// `tests/servers/recorder.py`, logging into `dir`, with `extra` environment.
pub(crate) fn recorder(dir: &Path, extra: &[(&str, String)]) -> pb::server_spec::Transport {
    let mut env: Vec<(String, String)> = vec![
        ("RECORD_DIR".to_string(), dir.display().to_string()),
        ("TICK_MS".to_string(), TICK_MS.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    pb::server_spec::Transport::Stdio(pb::StdioTransport {
        command: "python3".into(),
        args: vec![RECORDER.into()],
        env: env.into_iter().collect(),
        ..Default::default()
    })
}

/// Once the faults are healed and the registry has settled, one tool call through each
/// node must succeed within `CALLS_LIVE_LIMIT`; every call tried is returned, for the
/// check that none ran twice. The error says which node found no working replica.
async fn calls_after_faults(
    nodes: &[Node],
    clock: impl Fn() -> Duration,
) -> Result<Vec<CallRecord>, String> {
    let deadline = Instant::now() + CALLS_LIVE_LIMIT;
    let mut tried = Vec::new();
    for node in nodes {
        let mut api = client_of(&node.addr);
        for attempt in 0.. {
            let id = format!("after-{}-{attempt}", node.id);
            let record = calls::call_once(
                &mut api,
                node.id,
                id,
                calls::SETTLED_CALL_TIMEOUT_MS,
                clock(),
            )
            .await;
            let outcome = record.outcome.clone();
            tried.push(record);
            match outcome {
                CallOutcome::Done => break,
                CallOutcome::Failed(error) if Instant::now() > deadline => {
                    return Err(format!(
                        "no tool call through node {} succeeded within {CALLS_LIVE_LIMIT:?} after the faults: {error}",
                        node.id
                    ));
                }
                CallOutcome::Failed(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(tried)
}

/// How many times each call ran, from the recorder's call logs in `dir`.
fn tool_runs(dir: &Path) -> Result<BTreeMap<String, u32>, String> {
    let mut runs = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("calls-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        for call in text.lines().filter_map(|l| l.strip_prefix("call ")) {
            *runs.entry(call.to_string()).or_default() += 1;
        }
    }
    Ok(runs)
}

fn save_history(dir: &Path, events: &[Event]) -> Result<(), String> {
    let mut text = String::new();
    for event in events {
        let _ = writeln!(text, "{event:?}");
    }
    let path = dir.join("history.txt");
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Registers the one-slot recorder servers, through whichever node takes the write.
async fn add_fenced_servers(nodes: &[Node], records: &Path) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    for n in 0..FENCED_SERVERS {
        let name = format!("fenced-{n}");
        let dir = records.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let spec = pb::ServerSpec {
            name: name.clone(),
            transport: Some(recorder(&dir, &[])),
            replicas: 1,
            health_check: Some(workload::QUICK_CHECKS),
            restart: Some(workload::QUICK_RESTARTS),
            ..Default::default()
        };
        let mut last = String::new();
        'put: loop {
            for node in nodes {
                let request = pb::PutServerRequest {
                    spec: Some(spec.clone()),
                    expected_revision: None,
                };
                let answer = tokio::time::timeout(
                    Duration::from_secs(5),
                    client_of(&node.addr).put_server(request),
                )
                .await;
                match answer {
                    Ok(Ok(_)) => break 'put,
                    Ok(Err(status)) => last = status.message().to_string(),
                    Err(_) => last = "no answer".into(),
                }
            }
            if Instant::now() > deadline {
                return Err(format!("could not register {name}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Each recorder life of a one-slot server, from its logs: (start, last tick) in ns of
/// CLOCK_MONOTONIC, which every namespace shares, and where it was logged. A log is
/// named by the recorder's pid, and pids are reused in a long run: a second "start"
/// line in one log begins another life.
fn lives(dir: &Path) -> Result<Vec<(u64, u64, String)>, String> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".log") || name.starts_with("calls-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        let mut life: Option<(u64, u64)> = None;
        let mut number = 0;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            // A process killed while it wrote leaves a partial last line: it is skipped.
            let (Some(kind), Some(Ok(at))) = (words.next(), words.next().map(str::parse::<u64>))
            else {
                continue;
            };
            match (kind, life.as_mut()) {
                ("start", _) => {
                    if let Some((start, last)) = life.take() {
                        found.push((start, last, format!("{name} (life {number})")));
                    }
                    number += 1;
                    life = Some((at, at));
                }
                ("tick", Some((_, last))) => *last = at,
                _ => {}
            }
        }
        if let Some((start, last)) = life {
            let label = if number > 1 {
                format!("{name} (life {number})")
            } else {
                name
            };
            found.push((start, last, label));
        }
    }
    found.sort();
    Ok(found)
}

/// No slot had two lives at once: for each one-slot server, no life ticked after the
/// next one started. Returns the lives seen and the shortest gap between two.
fn check_slots(records: &Path) -> Result<(usize, Option<Duration>), String> {
    let mut count = 0;
    let mut shortest: Option<Duration> = None;
    for n in 0..FENCED_SERVERS {
        let name = format!("fenced-{n}");
        let lives = lives(&records.join(&name))?;
        if lives.is_empty() {
            return Err(format!("{name}: no replica ever ran"));
        }
        count += lives.len();
        for pair in lives.windows(2) {
            let ((_, old_last, old), (new_start, _, new)) = (&pair[0], &pair[1]);
            if old_last >= new_start {
                return Err(format!(
                    "slot overlap: {name}'s replica {old} ticked {} ms after {new} had started",
                    (old_last - new_start) / 1_000_000
                ));
            }
            let gap = Duration::from_nanos(new_start - old_last);
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        }
    }
    Ok((count, shortest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A records dir with one slot's logs, from `(file, text)`.
    fn slot_logs(test: &str, logs: &[(&str, &str)]) -> PathBuf {
        let records = std::env::temp_dir().join(format!(
            "mcpfleet-nemesis-test-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&records);
        for n in 0..FENCED_SERVERS {
            let dir = records.join(format!("fenced-{n}"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            for (file, text) in logs {
                std::fs::write(dir.join(file), text).expect("write log");
            }
        }
        records
    }

    #[test]
    fn a_reused_pid_starts_a_new_life_in_the_same_log() {
        // Pid 7 ran first, then pid 9, then pid 7 again (the pid was reused).
        let records = slot_logs(
            "reused",
            &[
                (
                    "7.log",
                    "start 100\ntick 120\ntick 140\nstart 500\ntick 520\n",
                ),
                ("9.log", "start 300\ntick 320\ntick 3"),
                ("calls-7.log", "call k0-1\n"),
            ],
        );
        let (lives, gap) = check_slots(&records).expect("no overlap");
        assert_eq!(lives, 3 * FENCED_SERVERS as usize);
        assert_eq!(gap, Some(Duration::from_nanos(160)));
        let _ = std::fs::remove_dir_all(&records);
    }

    #[test]
    fn a_life_that_ticks_after_the_next_started_is_an_overlap() {
        let records = slot_logs(
            "overlap",
            &[
                ("7.log", "start 100\ntick 120\ntick 340\n"),
                ("9.log", "start 300\ntick 320\n"),
            ],
        );
        let error = check_slots(&records).expect_err("an overlap");
        assert!(error.contains("7.log ticked"), "{error}");
        let _ = std::fs::remove_dir_all(&records);
    }
}
