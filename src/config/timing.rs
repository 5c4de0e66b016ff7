//! Every constant of the fencing inequality, in one place, and the inequality itself.
//!
//! The promise: a slot never runs on two nodes at once. The leader moves a slot off a
//! node only once it has not heard from it for `node_timeout_ms`; the old owner's
//! processes must be dead by then. The worst case, from the moment the leader last
//! heard the node (a heartbeat sent at `t`):
//! - a deposed leader that does not know it yet may still renew a lease for up to
//!   `LEASE_CONFIRM_MS` after the new leader's grace began, so the lease granted for
//!   `t` runs until at most `t + lease_ms` on a clock that started up to
//!   `LEASE_CONFIRM_MS` later;
//! - the replica's supervisor holds a deadline of lease end + `FENCE_GRACE_MS` on the
//!   host's monotonic clock. Past it, the supervisor SIGKILLs the replica's whole tree
//!   itself, whatever the node is doing: paused, stalled on disk, or dead (the node's
//!   own softer stop, SIGTERM on its next reconcile tick, comes first when it can);
//! - `KILL_DELIVERY_MS` covers the supervisor waking at its deadline and the kernel
//!   taking the tree down.
//!
//! So: `lease_ms + LEASE_CONFIRM_MS + FENCE_GRACE_MS + KILL_DELIVERY_MS < node_timeout_ms`.
//! The reconcile tick, the close timeout, a health ping in flight and the supervisor's
//! SIGTERM grace no longer enter it: none of them can delay the supervisor's deadline.

/// How recently the leader must have confirmed its leadership with a quorum to renew a
/// lease: a deposed leader that does not know it yet stops renewing within this time.
pub const LEASE_CONFIRM_MS: u64 = 300;
/// How long past the end of its lease a replica may live: the node's own stop (SIGTERM)
/// has this long before the supervisor's deadline SIGKILLs the tree.
pub const FENCE_GRACE_MS: u64 = 200;
/// Allowance for the supervisor to wake at its deadline and the kernel to kill the tree.
pub const KILL_DELIVERY_MS: u64 = 100;
/// How long a replica that is no longer wanted (its node holds a fresh lease) gets
/// between SIGTERM and SIGKILL.
pub const STOP_GRACE_MS: u64 = 2_000;
/// How often the agent compares its assignments with what runs.
pub const RECONCILE_MS: u64 = 100;

/// The longest a slot can outlive the last heartbeat the leader heard from its node,
/// beyond `lease_ms`.
pub const FENCE_MARGIN_MS: u64 = LEASE_CONFIRM_MS + FENCE_GRACE_MS + KILL_DELIVERY_MS;

/// Whether `lease_ms` and `node_timeout_ms` keep the promise above.
pub const fn fencing_holds(lease_ms: u64, node_timeout_ms: u64) -> bool {
    lease_ms + FENCE_MARGIN_MS < node_timeout_ms
}

// The defaults keep it (see `Config::default`).
const _: () = assert!(fencing_holds(1_100, 1_800));
