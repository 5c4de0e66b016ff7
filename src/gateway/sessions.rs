//! Legacy MCP sessions (protocol 2025-11-25 and older, `Mcp-Session-Id`) that any node
//! can carry on: rmcp's session store, backed by the replicated registry.
//!
//! - When a client's `initialize` succeeds, the node records the session (its id and
//!   the client's initialize parameters) through Raft before the client learns the id.
//! - A request with a session id this node does not hold in memory loads the record
//!   (from the applied state; on a miss, once more after a read barrier, since the
//!   write may not have reached this node yet) and rmcp replays the handshake, so the
//!   client carries on without re-initializing, whichever node it reaches, even when
//!   the node it started on is gone.
//! - A DELETE of the session removes the record. One write when a session opens and
//!   one when it closes; none per call. The registry keeps at most `MAX_SESSIONS`; past
//!   it the oldest goes.

use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use crate::control::{Reader, Writer};
use crate::registry::{Command, Outcome, RegistryError};

pub struct RegistrySessions {
    reader: Reader,
    writer: Writer,
}

impl RegistrySessions {
    pub fn new(reader: Reader, writer: Writer) -> RegistrySessions {
        RegistrySessions { reader, writer }
    }

    fn local(&self, id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let state = self.reader.stale();
        match state.registry.sessions.get(id) {
            Some(record) => Ok(Some(serde_json::from_str(&record.initialize)?)),
            None => Ok(None),
        }
    }
}

fn rejected(error: RegistryError) -> SessionStoreError {
    Box::new(error)
}

#[async_trait::async_trait]
impl SessionStore for RegistrySessions {
    async fn load(&self, id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        if let Some(state) = self.local(id)? {
            return Ok(Some(state));
        }
        let state = self.reader.linearizable().await?;
        match state.registry.sessions.get(id) {
            Some(record) => Ok(Some(serde_json::from_str(&record.initialize)?)),
            None => Ok(None),
        }
    }

    async fn store(&self, id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let command = Command::PutSession {
            id: id.to_string(),
            initialize: serde_json::to_string(state)?,
        };
        match self.writer.propose(command).await? {
            Outcome::Applied { .. } => Ok(()),
            Outcome::Rejected(error) => Err(rejected(error)),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), SessionStoreError> {
        let command = Command::DeleteSession { id: id.to_string() };
        match self.writer.propose(command).await? {
            Outcome::Applied { .. } | Outcome::Rejected(RegistryError::SessionNotFound { .. }) => {
                Ok(())
            }
            Outcome::Rejected(error) => Err(rejected(error)),
        }
    }
}
