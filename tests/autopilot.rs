//! Voters, learners and autopilot on real processes: five voters and five learners on
//! loopback. Two voters are killed for good (the leader among them), and the leader
//! promotes two learners in their place within the threshold; writes go on. Then two
//! more voters are killed: the cluster still has a quorum, promotes two more learners,
//! and removes the dead nodes once they have been silent past `--remove-dead-after-ms`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::*;

/// The autopilot thresholds of this test.
const DEAD_VOTER_AFTER_MS: u64 = 4_000;
const LEARNER_STABLE_MS: u64 = 2_000;
const REMOVE_DEAD_AFTER_MS: u64 = 12_000;
/// How long after a voter's death its replacement may take: the threshold, plus an
/// election when the leader died (its successor counts every member as heard when it
/// takes over), plus the membership change.
const PROMOTION_LIMIT: Duration = Duration::from_millis(DEAD_VOTER_AFTER_MS * 2 + 6_000);

fn flags() -> Vec<String> {
    [
        ("--dead-voter-after-ms", DEAD_VOTER_AFTER_MS),
        ("--learner-stable-ms", LEARNER_STABLE_MS),
        ("--remove-dead-after-ms", REMOVE_DEAD_AFTER_MS),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

/// (voters, learners) as the node at `endpoint` reports them.
fn roles(endpoint: &str) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let status = cli_json(endpoint, &["cluster", "status"])?;
    let members = status["members"].as_array().context("no members")?;
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for member in members {
        let id = member["id"].as_u64().context("member id")?;
        if member["voter"] == true {
            voters.insert(id);
        } else {
            learners.insert(id);
        }
    }
    Ok((voters, learners))
}

fn leader_of(endpoint: &str) -> Result<u64> {
    wait_for_leader(endpoint, Duration::from_secs(20))
}

/// Waits until the voters are `count` nodes, none of them in `dead`; returns them and
/// how long it took.
fn wait_for_voters(
    endpoint: &str,
    count: usize,
    dead: &BTreeSet<u64>,
    since: Instant,
) -> Result<(BTreeSet<u64>, Duration)> {
    let voters = eventually(PROMOTION_LIMIT, || {
        let (voters, _) = roles(endpoint)?;
        ensure!(
            voters.len() == count && voters.is_disjoint(dead),
            "voters {voters:?}, dead {dead:?}"
        );
        Ok(voters)
    })?;
    Ok((voters, since.elapsed()))
}

#[test]
fn learners_replace_dead_voters_and_dead_nodes_are_removed() -> Result<()> {
    let flags = flags();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(5, &flag_refs)?;
    let first = cluster.addr(1);
    leader_of(&first)?;
    for id in 6..=10 {
        let addr = format!("127.0.0.1:{}", free_port());
        let data = cluster.dir.path().join(format!("node{id}"));
        let mut join = vec!["--join".to_string(), first.clone()];
        join.extend(flags.iter().cloned());
        cluster
            .nodes
            .push(NodeProcess::start(id, &addr, &data, &join)?);
    }
    let joined = eventually(Duration::from_secs(60), || {
        let (voters, learners) = roles(&first)?;
        ensure!(
            voters.len() == 5 && learners.len() == 5,
            "voters {voters:?}, learners {learners:?}"
        );
        Ok((voters, learners))
    });
    let (voters, learners) = joined.map_err(|error| {
        let logs: Vec<String> = (6..=10)
            .map(|id| {
                let log = cluster.dir.path().join(format!("node{id}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!("node {id}: {}", tail.join(" | "))
            })
            .collect();
        error.context(format!("the learners did not join:\n{}", logs.join("\n")))
    })?;
    ensure!(
        voters == (1..=5).collect::<BTreeSet<_>>(),
        "voters {voters:?}"
    );
    ensure!(learners == (6..=10).collect::<BTreeSet<_>>());
    // A learner serves linearizable reads of what was written through a voter.
    add_server(&first, "before", &["--command", "echo"])?;
    ensure!(server_names(&cluster.addr(8), false)? == ["before"]);

    // Two voters die for good: the leader and the next one.
    let leader = leader_of(&first)?;
    let other = (1..=5).find(|id| *id != leader).expect("five voters");
    let mut dead: BTreeSet<u64> = [leader, other].into();
    for id in &dead {
        cluster.node(*id).kill();
    }
    let killed = Instant::now();
    let alive = (1..=5).find(|id| !dead.contains(id)).expect("three left");
    let endpoint = cluster.addr(alive);
    let (voters, took) = wait_for_voters(&endpoint, 5, &dead, killed)?;
    let promoted: BTreeSet<u64> = voters.difference(&(1..=5).collect()).copied().collect();
    println!(
        "autopilot: voters {dead:?} killed; learners {promoted:?} promoted {} ms later \
         (--dead-voter-after-ms {DEAD_VOTER_AFTER_MS})",
        took.as_millis()
    );
    ensure!(promoted.len() == 2, "promoted {promoted:?}");
    // The dead voters stay on as learners until they are removed.
    let (_, learners) = roles(&endpoint)?;
    ensure!(learners.is_superset(&dead), "learners {learners:?}");
    // Writes go on, through a promoted node too.
    let through = *promoted.iter().next().expect("two promoted");
    add_server(&cluster.addr(through), "after-two", &["--command", "echo"])?;

    // Two more of the first voters die: three of five voters remain, a quorum.
    let more: Vec<u64> = (1..=5).filter(|id| !dead.contains(id)).take(2).collect();
    for id in &more {
        cluster.node(*id).kill();
        dead.insert(*id);
    }
    let killed = Instant::now();
    add_server(&cluster.addr(through), "after-four", &["--command", "echo"])?;
    let (voters, took) = wait_for_voters(&cluster.addr(through), 5, &dead, killed)?;
    println!(
        "autopilot: voters {more:?} killed; voters now {voters:?}, {} ms later",
        took.as_millis()
    );

    // The four dead nodes leave the cluster once silent past the removal threshold.
    let (voters, learners) =
        eventually(Duration::from_millis(REMOVE_DEAD_AFTER_MS + 20_000), || {
            let (voters, learners) = roles(&cluster.addr(through))?;
            ensure!(
                learners.is_disjoint(&dead) && voters.len() + learners.len() == 6,
                "voters {voters:?}, learners {learners:?}"
            );
            Ok((voters, learners))
        })?;
    println!("autopilot: dead nodes removed; voters {voters:?}, learners {learners:?}");
    let names = server_names(&cluster.addr(through), false)?;
    ensure!(
        names == ["after-four", "after-two", "before"],
        "servers: {names:?}"
    );
    // The node table forgets them too (the leader's next round removes non-members).
    eventually(Duration::from_secs(10), || {
        let status = cli_json(&cluster.addr(through), &["status"])?;
        let listed: BTreeSet<u64> = status["nodes"]
            .as_array()
            .context("no nodes")?
            .iter()
            .filter_map(|n| n["id"].as_u64())
            .collect();
        ensure!(
            listed.is_disjoint(&dead),
            "the node table still lists {listed:?}"
        );
        Ok(())
    })?;
    Ok(())
}
