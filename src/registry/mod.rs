//! The replicated registry: data model, commands, validation and the deterministic
//! `apply`. Pure: no clock, no randomness, no I/O, no hash-ordered iteration.
//! Raft glue (src/raft) feeds it committed commands; the API reads it.

pub mod command;
pub mod model;
mod state;
pub mod validate;

pub use command::{Command, LogPosition, Outcome, Placement, RegistryError, ServerPut};
pub use model::*;
pub use state::{truncate_utf8, Change, Registry, Usage, MAX_ADDRESS_LEN, MAX_ERROR_BYTES};

#[cfg(test)]
mod tests;
