//! `mcpfleet bench plan`: the placement planner's time per round and the size of its
//! plan, on a synthetic cluster (no node is started): the first placement of every
//! slot, a round with nothing to change (what the leader runs on every tick), and the
//! round after a share of the nodes is lost.

use std::collections::BTreeSet;
use std::time::Instant;

use clap::Args;

use crate::registry::{AdminState, NodeStatus};
use crate::scheduler::{self, ClusterView, NodeView, ServerView};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Nodes, all up and active.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub nodes: u64,
    /// Servers.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub servers: u32,
    /// Replicas of each server.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: u32,
    /// The share of the nodes lost before the last round, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub lose_percent: u32,
    /// Timed runs of each round; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
}

/// One round's median time in ms over `runs`, and its plan's moves.
fn time_round(view: &ClusterView, runs: u32) -> (f64, usize) {
    let mut times = Vec::new();
    let mut moves = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let plan = scheduler::plan(view);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        moves = plan.moves.len();
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], moves)
}

pub fn run_plan(args: PlanArgs) {
    let mut view = ClusterView::default();
    for id in 1..=args.nodes {
        let node = NodeView {
            status: NodeStatus::Up,
            admin: AdminState::Active,
            tags: BTreeSet::new(),
            capacity: None,
        };
        view.nodes.insert(id, node);
    }
    for n in 0..args.servers {
        let server = ServerView {
            replicas: args.replicas,
            node_tags: BTreeSet::new(),
        };
        view.servers.insert(format!("server-{n:05}"), server);
    }
    println!(
        "planner: {} nodes, {} servers x {} replicas ({} slots), median of {} runs",
        args.nodes,
        args.servers,
        args.replicas,
        u64::from(args.servers) * u64::from(args.replicas),
        args.runs
    );
    let (ms, moves) = time_round(&view, args.runs);
    println!("  first placement: {ms:.1} ms, {moves} moves");
    view = scheduler::apply(&view, &scheduler::plan(&view));
    let (ms, moves) = time_round(&view, args.runs);
    println!("  nothing to change: {ms:.1} ms, {moves} moves");
    let lost = (args.nodes * u64::from(args.lose_percent)).div_ceil(100);
    for id in 1..=lost {
        if let Some(node) = view.nodes.get_mut(&id) {
            node.status = NodeStatus::Down;
        }
    }
    let (ms, moves) = time_round(&view, args.runs);
    println!("  after losing {lost} nodes: {ms:.1} ms, {moves} moves");
}
