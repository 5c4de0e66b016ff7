//! Node incarnations: which data dir a node id speaks for.
//!
//! Each data dir draws an incarnation id when it is first used and keeps it. The leader
//! records every node's incarnation in the registry's node table (from its heartbeats).
//! A node whose data dir was wiped comes back with a new incarnation and no memory of
//! its votes or its log; under its old id it could vote twice in a term or help lose an
//! acknowledged write. So every node-to-node call carries the caller's id and
//! incarnation, every Raft stream's answer carries the callee's, and whichever side
//! knows the id with another incarnation refuses the other. The node that is refused
//! for being replaced stops with a message that says how to replace it properly
//! (remove it from the cluster, then add it back). An id the registry does not know yet
//! (a new cluster, a node added again after its removal) is accepted.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use super::{NodeId, RegistryView};
use crate::env::Disk;

/// Metadata key of the caller's (or callee's) node id.
pub const NODE_KEY: &str = "mcpfleet-node";
/// Metadata key of its incarnation.
pub const INCARNATION_KEY: &str = "mcpfleet-incarnation";
/// The disk meta key that holds this data dir's incarnation.
const META_KEY: &str = "incarnation";
/// Prefix of the refusal a replaced node receives.
pub const REPLACED: &str = "replaced data dir";

/// This node's incarnation, and the registry to check others against.
pub struct Incarnations {
    id: NodeId,
    own: u64,
    view: Arc<RegistryView>,
    /// Set once this node learns it was replaced: the node stops with this reason.
    replaced: watch::Sender<Option<String>>,
}

/// Reads this data dir's incarnation, drawing one (from `seed`, never 0) on first use.
pub async fn load_or_create(disk: &dyn Disk, seed: u64) -> Result<u64, String> {
    if let Some(bytes) = disk.get_meta(META_KEY).map_err(|e| e.to_string())? {
        let bytes: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "the incarnation record is malformed".to_string())?;
        return Ok(u64::from_be_bytes(bytes));
    }
    // Mixed so that a node's boot seed and its incarnation never look alike.
    let incarnation = (seed ^ 0x696e_6361_726e_6174).max(1);
    disk.put_meta(META_KEY, incarnation.to_be_bytes().to_vec())
        .await
        .map_err(|e| e.to_string())?;
    disk.sync().await.map_err(|e| e.to_string())?;
    Ok(incarnation)
}

impl Incarnations {
    pub fn new(id: NodeId, own: u64, view: Arc<RegistryView>) -> Arc<Incarnations> {
        Arc::new(Incarnations {
            id,
            own,
            view,
            replaced: watch::channel(None).0,
        })
    }

    pub fn own(&self) -> u64 {
        self.own
    }

    /// Stamps a node-to-node call (or a stream's answer) with this node's identity.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        metadata.insert(NODE_KEY, self.id.into());
        metadata.insert(INCARNATION_KEY, self.own.into());
    }

    /// Whether `id` may speak as `incarnation`: refused only when the registry knows
    /// the id with another incarnation.
    pub fn check(&self, id: NodeId, incarnation: u64) -> Result<(), String> {
        let known = self
            .view
            .read()
            .registry
            .nodes
            .get(&id)
            .map_or(0, |node| node.incarnation);
        if known == 0 || known == incarnation {
            return Ok(());
        }
        Err(replaced_message(id, incarnation, known))
    }

    /// Checks the identity `metadata` carries (a call without one is accepted: only
    /// tools that are not nodes call without it).
    pub fn check_metadata(&self, metadata: &MetadataMap) -> Result<(), String> {
        let field = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (field(NODE_KEY), field(INCARNATION_KEY)) {
            (Some(id), Some(incarnation)) => self.check(id, incarnation),
            _ => Ok(()),
        }
    }

    /// Called when a peer refused this node with `message`: if it says this node's
    /// data dir was replaced, the node stops with that reason.
    pub fn refused(&self, message: &str) {
        if message.starts_with(REPLACED) {
            self.replaced.send_if_modified(|reason| {
                let first = reason.is_none();
                if first {
                    *reason = Some(message.to_string());
                }
                first
            });
        }
    }

    /// Resolves with the reason once this node learns it was replaced.
    pub async fn replaced(&self) -> String {
        let mut replaced = self.replaced.subscribe();
        let reason = replaced
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

/// The refusal for node `id` that speaks as `incarnation` while the cluster knows it as
/// `known`.
pub fn replaced_message(id: NodeId, incarnation: u64, known: u64) -> String {
    format!(
        "{REPLACED}: node {id} now runs on a data dir with incarnation {incarnation:016x}, \
         but the cluster knows node {id} from incarnation {known:016x}; a node whose data \
         dir was wiped or replaced cannot rejoin under its old id. Remove it first \
         (`mcpfleet cluster remove-node {id}` through a live node), then start it with an \
         empty data dir and --join HOST:PORT of a live node"
    )
}
