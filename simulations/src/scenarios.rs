//! Scenarios: each named after what it breaks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mcpfleet::env::MemoryDisk;
use mcpfleet::proto::v1 as pb;

use crate::{add_nodes, client, cluster_configs, host_name};

/// What a finished scenario reports.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub sim_seconds: f64,
    /// Human-readable events, in order.
    pub events: Vec<String>,
    /// A hash of the events and of every node's disk at the end: two runs of one seed
    /// must give the same value.
    pub trace_hash: u64,
}

fn trace_hash(events: &[String], sim_seconds: f64, disks: &BTreeMap<u64, Arc<MemoryDisk>>) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across runs and processes.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    events.hash(&mut hasher);
    sim_seconds.to_bits().hash(&mut hasher);
    for (id, disk) in disks {
        id.hash(&mut hasher);
        disk.fingerprint().hash(&mut hasher);
    }
    hasher.finish()
}

fn spec(name: &str) -> pb::PutServerRequest {
    pb::PutServerRequest {
        spec: Some(pb::ServerSpec {
            name: name.to_string(),
            transport: Some(pb::server_spec::Transport::Stdio(pb::StdioTransport {
                command: "mcp-server-time".into(),
                ..Default::default()
            })),
            replicas: 1,
            ..Default::default()
        }),
        expected_revision: None,
    }
}

/// Steps `sim` until `reached` holds; an error if the clients finish or fail first.
fn run_until(
    sim: &mut turmoil::Sim<'_>,
    reached: impl Fn() -> bool,
    what: &str,
) -> Result<(), String> {
    loop {
        let clients_finished = sim.step().map_err(|e| e.to_string())?;
        if reached() {
            return Ok(());
        }
        if clients_finished {
            return Err(format!("simulation ended {what}"));
        }
    }
}

/// Polls the nodes in `candidates` until one reports a leader.
async fn find_leader(candidates: &[u64]) -> Result<u64, String> {
    for _ in 0..200 {
        for id in candidates {
            if let Ok(status) = client(*id)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
            {
                if let Some(leader) = status.into_inner().leader_id {
                    if candidates.contains(&leader) {
                        return Ok(leader);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no leader among {candidates:?}"))
}

/// Retries a write on `node` until it is acknowledged (bounded).
async fn put_until_acknowledged(node: u64, name: &str) -> Result<u64, String> {
    let mut last_error = String::new();
    for _ in 0..20 {
        match client(node).put_server(spec(name)).await {
            Ok(response) => return Ok(response.into_inner().revision),
            Err(status) => last_error = status.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "write of {name} through node {node} never acknowledged: {last_error}"
    ))
}

/// Three nodes; a write is acknowledged; the leader crashes; a write through a
/// survivor must be acknowledged and both writes must be readable on the other
/// survivor. The crashed node then restarts from its disk and must catch up.
pub fn leader_crash(seed: u64) -> Result<Report, String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        // A LAN, which the production timings (election timeout 120-240 ms) are made for;
        // turmoil's default of up to 100 ms per message is a WAN.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .tcp_capacity(4096)
        .build();
    let disks = add_nodes(&mut sim, seed, cluster_configs(3));
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    let leader = Rc::new(RefCell::new(None::<u64>));

    let (log, found) = (events.clone(), leader.clone());
    sim.client("client-before", async move {
        let id = find_leader(&[1, 2, 3]).await?;
        let revision = put_until_acknowledged(id, "before").await?;
        log.borrow_mut().push(format!(
            "leader is node {id}; 'before' acknowledged at revision {revision}"
        ));
        *found.borrow_mut() = Some(id);
        Ok(())
    });
    run_until(
        &mut sim,
        || leader.borrow().is_some(),
        "before the first write",
    )?;
    let crashed = leader.borrow().expect("set above");
    sim.crash(host_name(crashed));
    // The machine went down with the process: what was not synced is gone.
    disks[&crashed].crash();
    events
        .borrow_mut()
        .push(format!("crashed node {crashed} at {:?}", sim.elapsed()));

    let survivors: Vec<u64> = (1..=3).filter(|id| *id != crashed).collect();
    let (log, done) = (events.clone(), Rc::new(RefCell::new(false)));
    let finished = done.clone();
    let nodes = survivors.clone();
    sim.client("client-after", async move {
        let revision = put_until_acknowledged(nodes[0], "after").await?;
        log.borrow_mut().push(format!(
            "'after' acknowledged through node {} at revision {revision}",
            nodes[0]
        ));
        let listed = client(nodes[1])
            .list_servers(pb::ListServersRequest { stale: false })
            .await?
            .into_inner();
        let names: Vec<String> = listed
            .servers
            .into_iter()
            .filter_map(|s| s.spec.map(|s| s.name))
            .collect();
        if names != ["after", "before"] {
            return Err(format!("node {} lists {names:?}, expected both writes", nodes[1]).into());
        }
        let leader = find_leader(&nodes).await?;
        log.borrow_mut().push(format!(
            "new leader is node {leader}; node {} lists {names:?}",
            nodes[1]
        ));
        *finished.borrow_mut() = true;
        Ok(())
    });
    run_until(
        &mut sim,
        || *done.borrow(),
        "before the write after the crash",
    )?;

    sim.bounce(host_name(crashed));
    events
        .borrow_mut()
        .push(format!("restarted node {crashed} from its disk"));
    let (log, done) = (events.clone(), Rc::new(RefCell::new(false)));
    let finished = done.clone();
    sim.client("client-restart", async move {
        for _ in 0..100 {
            let listed = client(crashed)
                .list_servers(pb::ListServersRequest { stale: true })
                .await;
            if let Ok(listed) = listed {
                if listed.into_inner().servers.len() == 2 {
                    log.borrow_mut().push(format!("node {crashed} caught up"));
                    *finished.borrow_mut() = true;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("node {crashed} did not catch up").into())
    });
    run_until(
        &mut sim,
        || *done.borrow(),
        "before the restarted node caught up",
    )?;
    let events = events.borrow().clone();
    let sim_seconds = sim.elapsed().as_secs_f64();
    Ok(Report {
        seed,
        sim_seconds,
        trace_hash: trace_hash(&events, sim_seconds, &disks),
        events,
    })
}
