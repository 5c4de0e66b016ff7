//! Who may do what: bearer tokens and their roles, on the gRPC client API
//! (`grpc::Authorize`) and on `/mcp` (the gateway's endpoint).
//!
//! A token is `mcpf_<id>_<secret>`: a public id (16 hex digits) and a secret (64 hex
//! digits, 256 random bits) that only its holder knows. The client that creates a
//! token makes the secret and sends only its SHA-256, so neither the registry nor any
//! node, log or snapshot ever holds it in clear. Every node checks a token against its
//! own applied registry, and only while it has heard from the leader within
//! `MAX_AUTH_STALENESS_MS`: a node that applies a revocation refuses the token at once,
//! and a node cut off from the leader refuses every token within that time, so a
//! revocation holds on every node within a second.
//!
//! Auth is switched on per cluster (`serve --auth`); the first token comes from
//! `mcpfleet token bootstrap`, which works only while the cluster has none.

pub mod grpc;

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::control::Reader;
use crate::registry::{Role, TokenRecord};

/// How every token's text begins.
pub const TOKEN_PREFIX: &str = "mcpf_";
/// Longest a node accepts tokens without hearing from the leader (its lease renewals):
/// the bound on how long a revoked token may still work on a node cut off from it.
pub const MAX_AUTH_STALENESS_MS: u64 = 1_000;
/// Longest `Authorization` header value read.
const MAX_HEADER_BYTES: usize = 512;

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this cluster needs a bearer token (`--token` or MCPFLEET_TOKEN)")]
    Missing,
    #[error("the Authorization header is not `Bearer mcpf_<id>_<secret>`")]
    Malformed,
    #[error("unknown or revoked token {id}")]
    Unknown { id: String },
    #[error(
        "this node has not heard from the leader {}, so it cannot tell whether a token \
         was revoked: try another node",
        match .since_ms { Some(ms) => format!("for {ms} ms"), None => "since it started".into() }
    )]
    Stale { since_ms: Option<u64> },
    #[error("token {id} is a {have}'s; this needs {need}")]
    Denied {
        id: String,
        have: &'static str,
        need: &'static str,
    },
    #[error("token {id} may not call {server}/{tool}")]
    NotInScope {
        id: String,
        server: String,
        tool: String,
    },
}

/// Who made a request, once its token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    servers: Vec<String>,
    tools: Vec<String>,
}

impl Principal {
    fn of(token: &TokenRecord) -> Principal {
        Principal {
            token_id: token.id.clone(),
            role: token.role,
            servers: token.servers.clone(),
            tools: token.tools.clone(),
        }
    }

    /// Whether the principal holds `need` or a role above it.
    pub fn require(&self, need: Role) -> Result<(), AuthError> {
        if self.role >= need {
            Ok(())
        } else {
            Err(AuthError::Denied {
                id: self.token_id.clone(),
                have: self.role.name(),
                need: need.name(),
            })
        }
    }

    /// Whether the principal may call `tool` (the server's own name for it) of
    /// `server`: an operator or admin any, a caller those its patterns name.
    pub fn may_call(&self, server: &str, tool: &str) -> bool {
        self.may_use(server) && (self.role >= Role::Operator || named(&self.tools, tool))
    }

    /// Whether the principal may use `server`'s prompts and resources: an operator or
    /// admin any server's, a caller those of the servers its patterns name.
    pub fn may_use(&self, server: &str) -> bool {
        self.role >= Role::Operator || (self.role == Role::Caller && named(&self.servers, server))
    }

    /// Whether a list shows the principal `tool` of `server`: a caller sees the tools
    /// it may call, every other role every tool.
    pub fn sees(&self, server: &str, tool: &str) -> bool {
        self.role != Role::Caller || self.may_call(server, tool)
    }

    /// `may_call`, as the error a refused call gets.
    pub fn check_call(&self, server: &str, tool: &str) -> Result<(), AuthError> {
        if self.may_call(server, tool) {
            Ok(())
        } else {
            Err(AuthError::NotInScope {
                id: self.token_id.clone(),
                server: server.to_string(),
                tool: tool.to_string(),
            })
        }
    }
}

/// Whether `patterns` name `name` (no patterns: any name).
fn named(patterns: &[String], name: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob_match(p, name))
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and
/// every other character for itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    // Greedy matching with one backtrack point: linear in practice, and never worse
    // than pattern length x name length.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The SHA-256 of a token's secret, in lower-case hex: what the registry holds.
pub fn secret_digest(secret: &str) -> String {
    to_hex(&Sha256::digest(secret.as_bytes()))
}

/// `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id and secret of a token's text.
pub fn parse_token(text: &str) -> Result<(&str, &str), AuthError> {
    use crate::registry::validate::is_lower_hex;
    let rest = text
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(AuthError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if is_lower_hex(id, 16) && is_lower_hex(secret, 64) {
        Ok((id, secret))
    } else {
        Err(AuthError::Malformed)
    }
}

/// The token of an `Authorization` header's value (`Bearer <token>`).
pub fn bearer(header: &str) -> Result<&str, AuthError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(AuthError::Malformed);
    }
    let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

/// A new token: its text, shown once to whoever made it, and the record the registry
/// keeps. `random` gives the 40 bytes of the id and secret; clients pass the operating
/// system's randomness (never a node: no node makes or sees a secret).
pub fn new_token(
    name: &str,
    role: Role,
    servers: Vec<String>,
    tools: Vec<String>,
    random: [u8; 40],
) -> (String, TokenRecord) {
    let id = to_hex(&random[..8]);
    let secret = to_hex(&random[8..]);
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_string(),
        role,
        servers,
        tools,
        secret_sha256: secret_digest(&secret),
        create_revision: 0,
    };
    (format!("{TOKEN_PREFIX}{id}_{secret}"), record)
}

/// Checks tokens against this node's applied registry.
#[derive(Clone)]
pub struct Authenticator {
    reader: Reader,
}

impl Authenticator {
    pub fn new(reader: Reader) -> Authenticator {
        Authenticator { reader }
    }

    /// The principal of a request with `headers`, if it holds `need` or more.
    pub fn authorize(&self, headers: &http::HeaderMap, need: Role) -> Result<Principal, AuthError> {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or(""));
        let principal = self.authenticate(header)?;
        principal.require(need)?;
        Ok(principal)
    }

    /// The principal of a request's `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let text = bearer(authorization.ok_or(AuthError::Missing)?)?;
        let (id, secret) = parse_token(text)?;
        let since = self.reader.since_leader_contact();
        if since.is_none_or(|since| since > Duration::from_millis(MAX_AUTH_STALENESS_MS)) {
            return Err(AuthError::Stale {
                since_ms: since.map(|since| since.as_millis() as u64),
            });
        }
        let applied = self.reader.stale();
        let token = applied
            .registry
            .tokens
            .get(id)
            .filter(|token| digests_equal(&token.secret_sha256, &secret_digest(secret)))
            .ok_or_else(|| AuthError::Unknown { id: id.to_string() })?;
        Ok(Principal::of(token))
    }
}

/// Compares two digests in time that does not depend on where they differ.
fn digests_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_any_characters() {
        for (pattern, name, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            ("echo", "echo", true),
            ("echo", "echo2", false),
            ("everything*", "everything-2", true),
            ("*thing*", "everything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("get_*", "get_time", true),
            ("get_*", "set_time", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn a_new_token_parses_and_its_digest_is_what_the_registry_keeps() {
        let (text, record) = new_token("ci", Role::Reader, vec![], vec![], [7; 40]);
        let (id, secret) = parse_token(&text).unwrap();
        assert_eq!(id, record.id);
        assert_eq!(secret_digest(secret), record.secret_sha256);
        assert!(!record.secret_sha256.contains(secret));
        assert_eq!(bearer(&format!("Bearer {text}")), Ok(text.as_str()));
        assert_eq!(bearer(&format!("bearer  {text} ")), Ok(text.as_str()));
    }

    #[test]
    fn malformed_tokens_and_headers_are_refused() {
        let good = format!("mcpf_{}_{}", "a".repeat(16), "b".repeat(64));
        assert!(parse_token(&good).is_ok());
        for bad in [
            "",
            "mcpf_",
            &good[1..],
            &format!("mcpf_{}_{}", "A".repeat(16), "b".repeat(64)),
            &format!("mcpf_{}_{}", "a".repeat(15), "b".repeat(64)),
            &format!("mcpf_{}_{}", "a".repeat(16), "b".repeat(63)),
            &format!("mcpf_{}_{}x", "a".repeat(16), "b".repeat(64)),
        ] {
            assert_eq!(parse_token(bad), Err(AuthError::Malformed), "{bad:?}");
        }
        for bad in ["", "Bearer", "Basic abc", &"x".repeat(MAX_HEADER_BYTES + 1)] {
            assert_eq!(bearer(bad), Err(AuthError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn roles_include_the_ones_below_and_scopes_bind_callers_only() {
        let principal = |role, servers: &[&str], tools: &[&str]| Principal {
            token_id: "t".into(),
            role,
            servers: servers.iter().map(|s| s.to_string()).collect(),
            tools: tools.iter().map(|s| s.to_string()).collect(),
        };
        let reader = principal(Role::Reader, &[], &[]);
        assert!(reader.require(Role::Reader).is_ok());
        assert!(reader.require(Role::Caller).is_err());
        assert!(!reader.may_call("echo", "echo"));
        let caller = principal(Role::Caller, &["every*"], &["echo"]);
        assert!(caller.may_call("everything", "echo"));
        assert!(!caller.may_call("everything", "add"));
        assert!(!caller.may_call("time", "echo"));
        assert!(caller.may_use("everything") && !caller.may_use("time"));
        assert!(!reader.may_use("everything"));
        assert!(caller.require(Role::Operator).is_err());
        let any = principal(Role::Caller, &[], &[]);
        assert!(any.may_call("time", "get_time"));
        let operator = principal(Role::Operator, &[], &[]);
        assert!(operator.may_call("time", "get_time"));
        assert!(principal(Role::Admin, &[], &[])
            .require(Role::Operator)
            .is_ok());
    }

    #[test]
    fn digests_compare_by_content() {
        assert!(digests_equal("abc", "abc"));
        assert!(!digests_equal("abc", "abd"));
        assert!(!digests_equal("abc", "ab"));
    }
}
