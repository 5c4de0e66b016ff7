//! The registry state and its deterministic `apply`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{Command, LogPosition, Outcome, Placement, RegistryError};
use super::model::*;
use super::validate::{spec_size, validate_spec};

/// Longest node address recorded.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest last error a health report keeps, in bytes.
pub const MAX_ERROR_BYTES: usize = 1_024;
/// Debug builds check the invariants after every command up to this many servers.
const DEBUG_CHECK_MAX_SERVERS: usize = 256;

/// Cuts `text` to at most `limit` bytes, on a character boundary.
pub fn truncate_utf8(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The whole replicated registry. Every successful command bumps `revision` by one (a
/// write of n servers by n, one per server); a rejected command changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub revision: u64,
    pub servers: BTreeMap<String, ServerRecord>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Keyed by (server, slot).
    pub assignments: BTreeMap<(String, u32), Assignment>,
    /// Keyed by (server, slot).
    pub health: BTreeMap<(String, u32), ReplicaHealth>,
    /// What each server offers, keyed by server name.
    pub catalogs: BTreeMap<String, Catalog>,
    /// Legacy MCP sessions, keyed by session id.
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Bearer tokens, keyed by id (`MAX_TOKENS` at most).
    pub tokens: BTreeMap<String, TokenRecord>,
    /// The last `MAX_AUDIT_ENTRIES` changes clients made, oldest first.
    pub audit: std::collections::VecDeque<AuditEntry>,
    /// What the registry holds against its budgets. Every command keeps it; it is not
    /// stored, and `recount` sets it after a registry is decoded.
    #[serde(skip)]
    usage: Usage,
}

/// What a registry holds against `MAX_CONTENT_BYTES` and `MAX_SLOTS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of specs, catalogs and session parameters.
    pub content_bytes: usize,
    /// Replica slots, over all servers.
    pub slots: usize,
}

/// A change to the server table, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put {
        record: Box<ServerRecord>,
        revision: u64,
    },
    Delete {
        name: String,
        revision: u64,
    },
}

impl Change {
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => *revision,
        }
    }
}

/// Every (server, slot) key of `server`, as a range of the tables keyed by slot.
fn slots_of(server: &str) -> std::ops::RangeInclusive<(String, u32)> {
    (server.to_string(), 0)..=(server.to_string(), u32::MAX)
}

impl Registry {
    /// Checks one command, as a proposal is checked, and applies it if it passes.
    /// Returns its outcome and, if the server table changed, the change for watchers.
    pub fn apply(&mut self, command: &Command) -> (Outcome, Vec<Change>) {
        if let Err(error) = command.check() {
            return (Outcome::Rejected(error), Vec::new());
        }
        self.apply_at(command, LogPosition::default())
    }

    /// Applies `command` carried by the log entry at `position`: assignments take the
    /// entry's index as their epoch, and a plan must come from the entry's term.
    ///
    /// The command was checked (`Command::check`) when it was proposed, and is not
    /// checked again: what `apply` decides depends only on what was committed and the
    /// state, never on rules that a later version may tighten. Its own rejections
    /// (a revision, an epoch, a budget) are all about the state.
    pub fn apply_at(&mut self, command: &Command, position: LogPosition) -> (Outcome, Vec<Change>) {
        let result = match command {
            Command::PutServer {
                spec,
                expected_revision,
            } => self.put_servers([(spec, *expected_revision)]),
            Command::PutServers { puts } => {
                self.put_servers(puts.iter().map(|put| (&put.spec, put.expected_revision)))
            }
            single => self
                .apply_one(single, position)
                .map(|change| change.into_iter().collect()),
        };
        // The check walks the whole registry: debug builds run it while that is cheap.
        if cfg!(debug_assertions) && self.servers.len() <= DEBUG_CHECK_MAX_SERVERS {
            assert_eq!(self.check_invariants(), Ok(()));
        }
        match result {
            Ok(change) => (
                Outcome::Applied {
                    revision: self.revision,
                },
                change,
            ),
            Err(error) => (Outcome::Rejected(error), Vec::new()),
        }
    }

    /// Records that `actor` made `command`, which was just applied at the leader's
    /// `stamp_ms`, in the audit log; the oldest entry goes past `MAX_AUDIT_ENTRIES`.
    pub fn record_audit(&mut self, command: &Command, actor: &str, stamp_ms: u64) {
        let mut actor = actor.to_string();
        truncate_utf8(&mut actor, MAX_AUDIT_TEXT);
        let mut target = command.target();
        truncate_utf8(&mut target, MAX_AUDIT_TEXT);
        if self.audit.len() >= MAX_AUDIT_ENTRIES {
            self.audit.pop_front();
        }
        self.audit.push_back(AuditEntry {
            revision: self.revision,
            stamp_ms,
            actor,
            action: command.kind().to_string(),
            target,
        });
    }

    /// Applies a command other than a write of servers.
    fn apply_one(
        &mut self,
        command: &Command,
        position: LogPosition,
    ) -> Result<Option<Change>, RegistryError> {
        match command {
            Command::PutServer { .. } | Command::PutServers { .. } => {
                unreachable!("apply_at applies the writes of servers")
            }
            Command::DeleteServer {
                name,
                expected_revision,
            } => self.delete_server(name, *expected_revision),
            Command::PutNode { node } => {
                self.revision += 1;
                self.nodes.insert(node.id, node.clone());
                Ok(None)
            }
            Command::RegisterNode {
                id,
                addr,
                tags,
                capacity,
                incarnation,
            } => self.register_node(*id, addr, tags, *capacity, *incarnation),
            Command::SetNodeStatus { id, status } => {
                self.update_node(*id, |node| node.status = *status)
            }
            Command::SetNodeAdmin { id, admin } => {
                self.update_node(*id, |node| node.admin = *admin)
            }
            Command::ReportHealth {
                server,
                slot,
                epoch,
                health,
            } => self.report_health(server, *slot, *epoch, health),
            Command::ReportCatalog {
                server,
                slot,
                epoch,
                node_id,
                catalog,
            } => self.report_catalog(server, *slot, *epoch, *node_id, catalog),
            Command::PutSession { id, initialize } => self.put_session(id, initialize),
            Command::DeleteSession { id } => match self.sessions.remove(id) {
                None => Err(RegistryError::SessionNotFound { id: id.clone() }),
                Some(removed) => {
                    self.take_room((removed.initialize.len(), 0), (0, 0));
                    self.revision += 1;
                    Ok(None)
                }
            },
            Command::ApplyPlan { term, placements } => {
                self.apply_plan(*term, placements, position).map(|()| None)
            }
            Command::CreateToken { token, first } => self.create_token(token, *first),
            Command::RevokeToken { id } => match self.tokens.remove(id) {
                None => Err(RegistryError::TokenNotFound { id: id.clone() }),
                Some(_) => {
                    self.revision += 1;
                    Ok(None)
                }
            },
            Command::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    Err(RegistryError::NodeNotFound { id: *id })
                } else {
                    self.revision += 1;
                    self.assignments.retain(|_, a| a.node_id != *id);
                    self.health.retain(|_, h| h.node_id != *id);
                    Ok(None)
                }
            }
        }
    }

    /// Changes one field of node `id`'s record.
    fn update_node(
        &mut self,
        id: NodeId,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<Option<Change>, RegistryError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or(RegistryError::NodeNotFound { id })?;
        change(node);
        self.revision += 1;
        Ok(None)
    }

    fn apply_plan(
        &mut self,
        term: u64,
        placements: &[Placement],
        position: LogPosition,
    ) -> Result<(), RegistryError> {
        if term != position.term {
            return Err(RegistryError::StalePlan {
                planned: term,
                current: position.term,
            });
        }
        let invalid = |reason: String| Err(RegistryError::InvalidPlan { reason });
        for placement in placements {
            let Some(record) = self.servers.get(&placement.server) else {
                return invalid(format!("server {:?} does not exist", placement.server));
            };
            if placement.slot >= record.spec.replicas {
                return invalid(format!(
                    "server {:?} has {} replicas, not slot {}",
                    placement.server, record.spec.replicas, placement.slot
                ));
            }
            if let Some(node) = placement.node {
                if !self
                    .nodes
                    .get(&node)
                    .is_some_and(NodeRecord::accepts_replicas)
                {
                    return invalid(format!("node {node} is not up and active"));
                }
            }
        }
        // What the plan sets, by slot (the last placement of a slot wins). The checks
        // and the change touch only the plan's servers: a plan costs its own size, not
        // the registry's.
        let mut planned: BTreeMap<(String, u32), Option<NodeId>> = BTreeMap::new();
        for placement in placements {
            planned.insert((placement.server.clone(), placement.slot), placement.node);
        }
        let servers: BTreeSet<&str> = placements.iter().map(|p| p.server.as_str()).collect();
        for server in servers {
            let slots = slots_of(server);
            let current = self
                .assignments
                .range(slots.clone())
                .filter(|(key, _)| !planned.contains_key(*key))
                .map(|(_, a)| a.node_id);
            let placed = planned.range(slots).filter_map(|(_, node)| *node);
            let mut seen = BTreeSet::new();
            if let Some(node) = current.chain(placed).find(|node| !seen.insert(*node)) {
                return invalid(format!("two replicas of {server:?} on node {node}"));
            }
        }
        for ((server, slot), node) in planned {
            let key = (server, slot);
            match node {
                Some(node_id) => {
                    let assignment = Assignment {
                        server: key.0.clone(),
                        slot,
                        node_id,
                        epoch: position.index,
                    };
                    self.assignments.insert(key.clone(), assignment);
                }
                None => {
                    self.assignments.remove(&key);
                }
            }
            // A slot that moved has no health yet on its new node.
            if self
                .health
                .get(&key)
                .is_some_and(|h| Some(h.node_id) != node)
            {
                self.health.remove(&key);
            }
        }
        self.revision += 1;
        Ok(())
    }

    fn register_node(
        &mut self,
        id: NodeId,
        addr: &str,
        tags: &[String],
        capacity: Option<u32>,
        incarnation: u64,
    ) -> Result<Option<Change>, RegistryError> {
        let invalid = |reason: String| Err(RegistryError::InvalidNode { reason });
        if let Some(known) = self.nodes.get(&id) {
            if known.incarnation != 0 && known.incarnation != incarnation {
                return invalid(format!(
                    "node {id} is known from another data dir (incarnation {:016x})",
                    known.incarnation
                ));
            }
        }
        if !self.nodes.contains_key(&id) && self.nodes.len() >= MAX_NODES {
            return Err(RegistryError::Full {
                reason: format!("the registry holds at most {MAX_NODES} nodes"),
            });
        }
        let (status, admin) = self
            .nodes
            .get(&id)
            .map_or((NodeStatus::Up, AdminState::Active), |n| {
                (n.status, n.admin)
            });
        self.nodes.insert(
            id,
            NodeRecord {
                id,
                addr: addr.to_string(),
                tags: tags.to_vec(),
                status,
                admin,
                capacity,
                incarnation,
            },
        );
        self.revision += 1;
        Ok(None)
    }

    fn report_health(
        &mut self,
        server: &str,
        slot: u32,
        epoch: u64,
        health: &ReplicaHealth,
    ) -> Result<Option<Change>, RegistryError> {
        let key = (server.to_string(), slot);
        let current = self
            .assignments
            .get(&key)
            .is_some_and(|a| a.epoch == epoch && a.node_id == health.node_id);
        if !current {
            return Err(RegistryError::StaleReport {
                server: server.to_string(),
                slot,
                epoch,
            });
        }
        let mut health = health.clone();
        if let Some(error) = &mut health.last_error {
            truncate_utf8(error, MAX_ERROR_BYTES);
        }
        self.health.insert(key, health);
        self.revision += 1;
        Ok(None)
    }

    fn report_catalog(
        &mut self,
        server: &str,
        slot: u32,
        epoch: u64,
        node_id: NodeId,
        catalog: &Catalog,
    ) -> Result<Option<Change>, RegistryError> {
        let current = self
            .assignments
            .get(&(server.to_string(), slot))
            .is_some_and(|a| a.epoch == epoch && a.node_id == node_id);
        if !current {
            return Err(RegistryError::StaleReport {
                server: server.to_string(),
                slot,
                epoch,
            });
        }
        let room = (
            self.catalogs.get(server).map_or(0, Catalog::size),
            catalog.size(),
        );
        self.check_room(room, (0, 0))?;
        self.take_room(room, (0, 0));
        self.catalogs.insert(server.to_string(), catalog.clone());
        self.revision += 1;
        Ok(None)
    }

    fn create_token(
        &mut self,
        token: &TokenRecord,
        first: bool,
    ) -> Result<Option<Change>, RegistryError> {
        if first && !self.tokens.is_empty() {
            return Err(RegistryError::AlreadyBootstrapped);
        }
        if self.tokens.contains_key(&token.id) {
            return Err(RegistryError::TokenExists {
                id: token.id.clone(),
            });
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(RegistryError::Full {
                reason: format!("the registry holds at most {MAX_TOKENS} tokens"),
            });
        }
        self.revision += 1;
        let mut token = token.clone();
        token.create_revision = self.revision;
        self.tokens.insert(token.id.clone(), token);
        Ok(None)
    }

    fn put_session(&mut self, id: &str, initialize: &str) -> Result<Option<Change>, RegistryError> {
        let evicted = if !self.sessions.contains_key(id) && self.sessions.len() >= MAX_SESSIONS {
            self.sessions
                .iter()
                .min_by_key(|(id, record)| (record.revision, (*id).clone()))
                .map(|(id, _)| id.clone())
        } else {
            None
        };
        let replaced = [Some(id), evicted.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|id| self.sessions.get(id))
            .map(|s| s.initialize.len())
            .sum();
        let room = (replaced, initialize.len());
        self.check_room(room, (0, 0))?;
        self.take_room(room, (0, 0));
        if let Some(oldest) = evicted {
            self.sessions.remove(&oldest);
        }
        self.revision += 1;
        self.sessions.insert(
            id.to_string(),
            SessionRecord {
                initialize: initialize.to_string(),
                revision: self.revision,
            },
        );
        Ok(None)
    }

    /// Writes servers, all or none: every precondition (revisions, the server count,
    /// the budgets) is checked for the whole set before anything changes. Each server
    /// gets its own revision, in order, as if written one by one.
    fn put_servers<'a>(
        &mut self,
        puts: impl IntoIterator<Item = (&'a ServerSpec, Option<u64>)> + Clone,
    ) -> Result<Vec<Change>, RegistryError> {
        let (mut room, mut slots, mut added) = ((0, 0), (0, 0), 0);
        for (spec, expected_revision) in puts.clone() {
            let current = self.servers.get(&spec.name);
            if let Some(expected) = expected_revision {
                let current_revision = current.map_or(0, |r| r.mod_revision);
                if expected != current_revision {
                    return Err(RegistryError::RevisionMismatch {
                        name: spec.name.clone(),
                        expected,
                        current: current_revision,
                    });
                }
            }
            added += usize::from(current.is_none());
            room.0 += current.map_or(0, |r| spec_size(&r.spec));
            room.1 += spec_size(spec);
            slots.0 += current.map_or(0, |r| r.spec.replicas as usize);
            slots.1 += spec.replicas as usize;
        }
        if added > 0 && self.servers.len() + added > MAX_SERVERS {
            return Err(RegistryError::TooManyServers { limit: MAX_SERVERS });
        }
        self.check_room(room, slots)?;
        Ok(puts
            .into_iter()
            .map(|(spec, _)| self.write_server(spec))
            .collect())
    }

    /// Creates or replaces one server, its preconditions checked.
    fn write_server(&mut self, spec: &ServerSpec) -> Change {
        let current = self.servers.get(&spec.name);
        let room = (current.map_or(0, |r| spec_size(&r.spec)), spec_size(spec));
        let slots = (
            current.map_or(0, |r| r.spec.replicas as usize),
            spec.replicas as usize,
        );
        self.revision += 1;
        let create_revision = current.map_or(self.revision, |r| r.create_revision);
        let transport_revision = match current {
            Some(current) if current.spec.transport == spec.transport => current.transport_revision,
            _ => self.revision,
        };
        let record = ServerRecord {
            spec: spec.clone(),
            create_revision,
            mod_revision: self.revision,
            transport_revision,
        };
        // Slots beyond the new replica count no longer exist.
        self.assignments
            .retain(|(server, slot), _| server != &spec.name || *slot < spec.replicas);
        self.health
            .retain(|(server, slot), _| server != &spec.name || *slot < spec.replicas);
        self.take_room(room, slots);
        self.servers.insert(spec.name.clone(), record.clone());
        Change::Put {
            record: Box::new(record),
            revision: self.revision,
        }
    }

    fn delete_server(
        &mut self,
        name: &str,
        expected_revision: Option<u64>,
    ) -> Result<Option<Change>, RegistryError> {
        let Some(current) = self.servers.get(name) else {
            return Err(RegistryError::ServerNotFound {
                name: name.to_string(),
            });
        };
        if let Some(expected) = expected_revision {
            if expected != current.mod_revision {
                return Err(RegistryError::RevisionMismatch {
                    name: name.to_string(),
                    expected,
                    current: current.mod_revision,
                });
            }
        }
        let room = (spec_size(&current.spec), 0);
        let slots = (current.spec.replicas as usize, 0);
        self.take_room(room, slots);
        self.revision += 1;
        self.servers.remove(name);
        if let Some(catalog) = self.catalogs.remove(name) {
            self.take_room((catalog.size(), 0), (0, 0));
        }
        let slots: Vec<(String, u32)> = self
            .assignments
            .range(slots_of(name))
            .map(|(key, _)| key.clone())
            .chain(
                self.health
                    .range(slots_of(name))
                    .map(|(key, _)| key.clone()),
            )
            .collect();
        for key in slots {
            self.assignments.remove(&key);
            self.health.remove(&key);
        }
        Ok(Some(Change::Delete {
            name: name.to_string(),
            revision: self.revision,
        }))
    }

    /// What the registry holds against its budgets.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Counts the usage again from the contents (after decoding a registry).
    pub fn recount(&mut self) {
        self.usage = self.counted_usage();
    }

    fn counted_usage(&self) -> Usage {
        Usage {
            content_bytes: self
                .servers
                .values()
                .map(|r| spec_size(&r.spec))
                .sum::<usize>()
                + self.catalogs.values().map(Catalog::size).sum::<usize>()
                + self
                    .sessions
                    .values()
                    .map(|s| s.initialize.len())
                    .sum::<usize>(),
            slots: self
                .servers
                .values()
                .map(|r| r.spec.replicas as usize)
                .sum(),
        }
    }

    /// Refuses a change that replaces `old` content bytes by `new` and `old_slots`
    /// replica slots by `new_slots` if it grows the registry past a budget (a change
    /// that shrinks or keeps it is always accepted).
    fn check_room(
        &self,
        (old, new): (usize, usize),
        (old_slots, new_slots): (usize, usize),
    ) -> Result<(), RegistryError> {
        let content = self.usage.content_bytes + new - old;
        if new > old && content > MAX_CONTENT_BYTES {
            return Err(RegistryError::Full {
                reason: format!(
                    "specs, catalogs and sessions would take {content} bytes, over the \
                     {MAX_CONTENT_BYTES} the registry holds"
                ),
            });
        }
        let slots = self.usage.slots + new_slots - old_slots;
        if new_slots > old_slots && slots > MAX_SLOTS {
            return Err(RegistryError::Full {
                reason: format!(
                    "servers would ask for {slots} replicas in all, over the {MAX_SLOTS} the \
                     registry holds"
                ),
            });
        }
        Ok(())
    }

    /// Applies a change checked by `check_room`.
    fn take_room(&mut self, (old, new): (usize, usize), (old_slots, new_slots): (usize, usize)) {
        self.usage.content_bytes = self.usage.content_bytes + new - old;
        self.usage.slots = self.usage.slots + new_slots - old_slots;
    }

    /// The registry's invariants. Unit tests and the simulator call this after every
    /// step; `apply` asserts it in debug builds, on registries of up to 256 servers.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.usage != self.counted_usage() {
            return Err(format!(
                "usage is kept as {:?} but the contents count {:?}",
                self.usage,
                self.counted_usage()
            ));
        }
        for (name, record) in &self.servers {
            if name != &record.spec.name {
                return Err(format!(
                    "server keyed {name:?} is named {:?}",
                    record.spec.name
                ));
            }
            if record.create_revision > record.mod_revision || record.mod_revision > self.revision {
                return Err(format!(
                    "server {name:?} has revisions {}..{} beyond registry revision {}",
                    record.create_revision, record.mod_revision, self.revision
                ));
            }
            if let Err(error) = validate_spec(&record.spec) {
                return Err(format!("server {name:?} holds an invalid spec: {error}"));
            }
        }
        if let Some(name) = self
            .catalogs
            .keys()
            .find(|n| !self.servers.contains_key(*n))
        {
            return Err(format!("catalog of unknown server {name:?}"));
        }
        if self.sessions.len() > MAX_SESSIONS {
            return Err(format!("{} sessions, over the cap", self.sessions.len()));
        }
        if self.audit.len() > MAX_AUDIT_ENTRIES {
            return Err(format!("{} audit entries, over the cap", self.audit.len()));
        }
        if self.tokens.len() > MAX_TOKENS {
            return Err(format!("{} tokens, over the cap", self.tokens.len()));
        }
        if let Some((id, token)) = self
            .tokens
            .iter()
            .find(|(id, t)| **id != t.id || t.create_revision > self.revision)
        {
            return Err(format!(
                "token keyed {id:?} is {:?}, created at revision {}",
                token.id, token.create_revision
            ));
        }
        let mut nodes_per_server: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for ((server, slot), assignment) in &self.assignments {
            let Some(record) = self.servers.get(server) else {
                return Err(format!("assignment for unknown server {server:?}"));
            };
            if *slot >= record.spec.replicas {
                return Err(format!(
                    "server {server:?} has an assignment for slot {slot}"
                ));
            }
            if !self.nodes.contains_key(&assignment.node_id) {
                return Err(format!(
                    "assignment {server:?}/{slot} points at unknown node {}",
                    assignment.node_id
                ));
            }
            nodes_per_server
                .entry(server)
                .or_default()
                .push(assignment.node_id);
        }
        // The scheduler leaves a slot unplaced rather than double up (DESIGN invariant
        // 4), and a plan that doubles up is refused: never two on one node.
        for (server, mut nodes) in nodes_per_server {
            nodes.sort_unstable();
            if let Some(pair) = nodes.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(format!(
                    "server {server:?} has two replicas on node {}",
                    pair[0]
                ));
            }
        }
        Ok(())
    }
}
