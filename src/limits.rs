//! The size bounds that must fit together, and the checks that they do, made when the
//! crate compiles. Each bound is defined next to the code it limits; this module only
//! brings them together. Nothing imports it.
//!
//! What is checked:
//! - a snapshot of the largest registry and table of client sessions the caps allow
//!   decodes within `MAX_DECODE_BYTES`, so a node never writes a snapshot it cannot
//!   read back;
//! - a client request as large as the largest spec fits `MAX_REQUEST_BYTES`;
//! - a page of a list answer fits the 4 MiB a tonic client accepts by default;
//! - every command fits one Raft entry's byte cap, and an AppendEntries message of
//!   `MAX_PAYLOAD_ENTRIES` full entries fits `MAX_RAFT_MESSAGE_BYTES`.
//!
//! The bounds below of bincode's encoding are deliberately loose: a string or list of
//! fewer than 65,536 bytes or items carries at most 3 bytes of length, and a number
//! (or enum tag, or option) at most 9 bytes.

use crate::api::paging::MAX_PAGE_BYTES;
use crate::config::{MAX_PAYLOAD_ENTRIES, MAX_REQUEST_BYTES};
use crate::control::MAX_BATCH_BYTES;
use crate::raft::codec::{MAX_DECODE_BYTES, TAG_BYTES};
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::sessions::{MAX_CLIENT_SESSIONS, MAX_OUTCOMES};
use crate::registry::{
    MAX_ADDRESS_LEN, MAX_CATALOG_BYTES, MAX_CONTENT_BYTES, MAX_ERROR_BYTES, MAX_LIST_ITEMS,
    MAX_NAME_LEN, MAX_NODES, MAX_REPLICAS, MAX_SERVERS, MAX_SESSIONS, MAX_SESSION_BYTES, MAX_SLOTS,
    MAX_SPEC_BYTES,
};

/// Length prefix of a string or list below 65,536 bytes or items.
const LEN: usize = 3;
/// A number, enum tag or option marker.
const NUM: usize = 9;
/// A name as a map key or field.
const NAME: usize = LEN + MAX_NAME_LEN;

/// A server's record beyond its spec's content bytes (`spec_size`): the name as key,
/// the length prefixes of every string and list a spec can hold (command, cwd and url;
/// args, env and header pairs, tags), and its numbers and settings.
pub const SERVER_OVERHEAD: usize = NAME + (3 + 4 * MAX_LIST_ITEMS + 8) * LEN + 64 * NUM;
/// A catalog beyond its content bytes: the name as key, five strings, a revision.
pub const CATALOG_OVERHEAD: usize = NAME + 5 * LEN + NUM;
/// A legacy session beyond its parameters: its id (twice a name) and revision.
pub const SESSION_OVERHEAD: usize = 2 * NAME + LEN + NUM;
/// A node's record, whole: id as key and field, address, tags, states, capacity and
/// incarnation.
pub const NODE_BYTES: usize =
    2 * NUM + LEN + MAX_ADDRESS_LEN + LEN + MAX_LIST_ITEMS * NAME + 8 * NUM;
/// A replica slot, whole: its assignment and its health, each keyed by (server, slot),
/// the health's error text included.
pub const SLOT_BYTES: usize =
    2 * (NAME + NUM) + (NAME + 4 * NUM) + (8 * NUM + LEN + MAX_ERROR_BYTES);

/// The largest registry the caps allow, encoded.
pub const LARGEST_REGISTRY_BYTES: usize = NUM
    + MAX_CONTENT_BYTES
    + MAX_SERVERS * (SERVER_OVERHEAD + CATALOG_OVERHEAD)
    + MAX_SESSIONS * SESSION_OVERHEAD
    + MAX_NODES * NODE_BYTES
    + MAX_SLOTS * SLOT_BYTES
    + 6 * LEN;

/// One outcome a client session keeps: its number, and either a revision or a
/// rejection by `apply`, which names at most a server or session and says one short
/// sentence about it (the checks with long reasons run at proposal, and are not kept).
pub const OUTCOME_BYTES: usize = 2 * NUM + 4 * (LEN + 2 * MAX_NAME_LEN);
/// The largest table of client sessions: each session's key, floor, time and map, and
/// every outcome.
pub const LARGEST_SESSIONS_BYTES: usize =
    2 * NUM + LEN + MAX_CLIENT_SESSIONS * (5 * NUM + LEN) + MAX_OUTCOMES * OUTCOME_BYTES;
/// The largest snapshot: the registry, the sessions and the tag.
pub const LARGEST_SNAPSHOT_BYTES: usize =
    TAG_BYTES + LARGEST_REGISTRY_BYTES + LARGEST_SESSIONS_BYTES;

/// The largest PutServer request: one spec and its settings.
pub const LARGEST_PUT_REQUEST_BYTES: usize = MAX_SPEC_BYTES + SERVER_OVERHEAD;

/// A proposal beyond its command: request id, floor, variant tag.
const PROPOSAL_OVERHEAD: usize = 6 * NUM;
/// The largest command of each kind that carries much: a spec, a catalog report (a
/// name and four numbers beside the catalog), a legacy session, a placement plan for
/// every slot (a name, a slot and a node each), a node's record.
const LARGEST_COMMAND_BYTES: usize = max(
    max(
        LARGEST_PUT_REQUEST_BYTES,
        MAX_CATALOG_BYTES + CATALOG_OVERHEAD + NAME + 4 * NUM,
    ),
    max(
        max(MAX_SESSION_BYTES + SESSION_OVERHEAD, NODE_BYTES),
        NUM + LEN + MAX_SLOTS * (NAME + 3 * NUM),
    ),
);
/// One Raft entry beyond its proposals: log id, payload tag, stamp, list length.
const ENTRY_OVERHEAD: usize = 8 * NUM + LEN;
/// An AppendEntries request beyond its entries: vote, previous log id, commit index,
/// list length, tag.
const APPEND_OVERHEAD: usize = 16 * NUM + LEN + TAG_BYTES;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// What a tonic client decodes at most unless told otherwise.
pub const TONIC_CLIENT_DECODE_BYTES: usize = 4 * 1024 * 1024;

/// The largest item of a page: a server's record and its replicas' status.
const LARGEST_PAGE_ITEM_BYTES: usize =
    MAX_SPEC_BYTES + SERVER_OVERHEAD + MAX_REPLICAS as usize * SLOT_BYTES;

const _: () = assert!(LARGEST_SNAPSHOT_BYTES <= MAX_DECODE_BYTES);
const _: () = assert!(LARGEST_COMMAND_BYTES + PROPOSAL_OVERHEAD + TAG_BYTES <= MAX_BATCH_BYTES);
const _: () = assert!(
    MAX_PAYLOAD_ENTRIES as usize * (MAX_BATCH_BYTES + ENTRY_OVERHEAD) + APPEND_OVERHEAD
        <= MAX_RAFT_MESSAGE_BYTES
);
const _: () = assert!(LARGEST_PUT_REQUEST_BYTES <= MAX_REQUEST_BYTES);
const _: () = assert!(MAX_PAGE_BYTES + LARGEST_PAGE_ITEM_BYTES <= TONIC_CLIENT_DECODE_BYTES);
const _: () = assert!(MAX_CATALOG_BYTES <= MAX_CONTENT_BYTES);

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures the docs quote (docs/operations.md).
    #[test]
    fn the_largest_registry_leaves_room_in_a_snapshot() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(
            LARGEST_REGISTRY_BYTES / MIB,
            208,
            "{LARGEST_REGISTRY_BYTES}"
        );
        assert_eq!(
            LARGEST_SNAPSHOT_BYTES / MIB,
            241,
            "{LARGEST_SNAPSHOT_BYTES}"
        );
        assert_eq!(MAX_DECODE_BYTES / MIB, 256);
    }
}
