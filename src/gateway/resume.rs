//! Requests in several rounds (protocol 2026-07-28). A server that needs input from the
//! client (an elicitation, a sampling) answers `input_required` with an opaque
//! `requestState`; the client sends the request again with its answers and that state.
//!
//! The retry may reach any node, and the router could pick any replica, but only the
//! replica that asked can read its state: a server may seal it with a key of its own
//! process. So the fleet wraps the state together with the replica that produced it
//! (server, slot, epoch), and the retry goes to exactly that replica, through whichever
//! node it reaches. Nothing is kept on any node.
//!
//! The envelope only routes: it carries the server's own state untouched, and the
//! server still checks that. A forged envelope can at most name another replica of
//! the server it names, and a retry naming a server other than the request's is
//! refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::agent::{Answer, Request};
use rmcp::model::{CallToolResponse, GetPromptResponse, InputRequiredResult, ReadResourceResponse};

/// Starts every `requestState` the fleet hands out (and names its format version).
const PREFIX: &str = "mcpfleet1.";

/// Longest `requestState` accepted from a client.
pub const MAX_REQUEST_STATE_BYTES: usize = 64 * 1024;

/// The replica a retry must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub slot: u32,
    pub epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    server: String,
    slot: u32,
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("requestState is over {MAX_REQUEST_STATE_BYTES} bytes")]
    TooLarge,
    #[error("requestState was not issued by this fleet")]
    Foreign,
    #[error("requestState belongs to server {0:?}, not to this request's")]
    OtherServer(String),
}

fn request_state(request: &mut Request) -> &mut Option<String> {
    match request {
        Request::CallTool(params) => &mut params.request_state,
        Request::GetPrompt(params) => &mut params.request_state,
        Request::ReadResource(params) => &mut params.request_state,
    }
}

/// Takes the fleet's envelope off `request`'s `requestState` for `server`: the replica
/// it must go to, and the server's own state put back in its place. A request with no
/// state is left as it is, with no pin.
pub fn open(server: &str, request: &mut Request) -> Result<Option<Pin>, ResumeError> {
    let state = request_state(request);
    let Some(sealed) = state.as_deref() else {
        return Ok(None);
    };
    if sealed.len() > MAX_REQUEST_STATE_BYTES {
        return Err(ResumeError::TooLarge);
    }
    let envelope: Envelope = sealed
        .strip_prefix(PREFIX)
        .and_then(|body| URL_SAFE_NO_PAD.decode(body).ok())
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(ResumeError::Foreign)?;
    if envelope.server != server {
        return Err(ResumeError::OtherServer(envelope.server));
    }
    *state = envelope.state;
    Ok(Some(Pin {
        slot: envelope.slot,
        epoch: envelope.epoch,
    }))
}

/// Wraps the state of an `input_required` answer from replica `pin` of `server`, so
/// that the client's retry comes back to it.
pub fn seal(server: &str, pin: Pin, answer: &mut Answer) {
    let input_required: Option<&mut InputRequiredResult> = match answer {
        Answer::Tool(CallToolResponse::InputRequired(result))
        | Answer::Prompt(GetPromptResponse::InputRequired(result))
        | Answer::Resource(ReadResourceResponse::InputRequired(result)) => Some(result),
        _ => None,
    };
    let Some(result) = input_required else { return };
    let envelope = Envelope {
        server: server.to_string(),
        slot: pin.slot,
        epoch: pin.epoch,
        state: result.request_state.take(),
    };
    // Serializing strings and numbers cannot fail.
    let json = serde_json::to_vec(&envelope).unwrap_or_default();
    result.request_state = Some(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::CallToolRequestParams;

    fn input_required(state: Option<&str>) -> Answer {
        Answer::Tool(CallToolResponse::InputRequired(InputRequiredResult::new(
            None,
            state.map(str::to_string),
        )))
    }

    fn sealed_state(answer: &Answer) -> String {
        match answer {
            Answer::Tool(CallToolResponse::InputRequired(r)) => r.request_state.clone().unwrap(),
            _ => panic!("not input_required"),
        }
    }

    fn retry(state: &str) -> Request {
        let mut params = CallToolRequestParams::new("ask");
        params.request_state = Some(state.to_string());
        Request::CallTool(params)
    }

    #[test]
    fn a_sealed_state_opens_to_its_replica_and_the_servers_own_state() {
        let pin = Pin { slot: 1, epoch: 42 };
        for own in [Some("opaque-state"), None] {
            let mut answer = input_required(own);
            seal("everything", pin, &mut answer);
            let mut request = retry(&sealed_state(&answer));
            assert_eq!(open("everything", &mut request), Ok(Some(pin)));
            let Request::CallTool(params) = request else {
                unreachable!()
            };
            assert_eq!(params.request_state.as_deref(), own);
        }
    }

    #[test]
    fn a_request_without_state_has_no_pin() {
        let mut request = Request::CallTool(CallToolRequestParams::new("ask"));
        assert_eq!(open("everything", &mut request), Ok(None));
    }

    #[test]
    fn foreign_oversize_and_other_servers_states_are_refused() {
        for bad in ["plain", "mcpfleet1.!!", "mcpfleet1.e30"] {
            assert_eq!(
                open("everything", &mut retry(bad)),
                Err(ResumeError::Foreign),
                "{bad}"
            );
        }
        let huge = format!("{PREFIX}{}", "A".repeat(MAX_REQUEST_STATE_BYTES));
        assert_eq!(
            open("everything", &mut retry(&huge)),
            Err(ResumeError::TooLarge)
        );
        let mut answer = input_required(Some("s"));
        seal("time", Pin { slot: 0, epoch: 1 }, &mut answer);
        assert_eq!(
            open("everything", &mut retry(&sealed_state(&answer))),
            Err(ResumeError::OtherServer("time".into()))
        );
    }

    #[test]
    fn other_answers_are_left_alone() {
        let mut answer = Answer::Tool(CallToolResponse::Complete(Default::default()));
        seal("everything", Pin { slot: 0, epoch: 1 }, &mut answer);
        assert!(matches!(
            answer,
            Answer::Tool(CallToolResponse::Complete(ref r)) if r.content.is_empty()
        ));
    }
}
