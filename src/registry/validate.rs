//! Validation of commands, names and specs: the checks that need no state. A command
//! is checked once, when the leader proposes it (`check_command`), and the API checks
//! names and specs earlier still, to fail fast on the node a client talks to. `apply`
//! does not check again (see `Registry::apply_at`).

use super::command::{Command, RegistryError, ServerPut};
use super::model::*;
use super::state::MAX_ADDRESS_LEN;

/// Checks what `command` carries, without looking at any state.
pub fn check_command(command: &Command) -> Result<(), RegistryError> {
    match command {
        Command::PutServer { spec, .. } => validate_spec(spec),
        Command::PutServers { puts } => check_puts(puts),
        Command::DeleteServer { name, .. } => validate_name(name),
        Command::RegisterNode { id, addr, tags, .. } => check_node(*id, addr, tags),
        Command::ReportCatalog {
            server, catalog, ..
        } if catalog.size() > MAX_CATALOG_BYTES => Err(RegistryError::CatalogTooLarge {
            server: server.to_string(),
            size: catalog.size(),
            limit: MAX_CATALOG_BYTES,
        }),
        Command::PutSession { id, initialize } => check_session(id, initialize),
        Command::CreateToken { token, .. } => check_token(token),
        Command::RevokeToken { id } => check_token_id(id),
        Command::ReportCatalog { .. }
        | Command::PutNode { .. }
        | Command::RemoveNode { .. }
        | Command::SetNodeStatus { .. }
        | Command::SetNodeAdmin { .. }
        | Command::ReportHealth { .. }
        | Command::DeleteSession { .. }
        | Command::ApplyPlan { .. } => Ok(()),
    }
}

fn check_puts(puts: &[ServerPut]) -> Result<(), RegistryError> {
    let invalid = |reason: String| Err(RegistryError::InvalidWrite { reason });
    if puts.is_empty() || puts.len() > MAX_SERVERS_PER_WRITE {
        return invalid(format!(
            "{} servers in one write; it takes 1..={MAX_SERVERS_PER_WRITE}",
            puts.len()
        ));
    }
    let bytes: usize = puts.iter().map(|put| spec_size(&put.spec)).sum();
    if bytes > MAX_WRITE_SPEC_BYTES {
        return invalid(format!(
            "the specs take {bytes} bytes, over the {MAX_WRITE_SPEC_BYTES} one write carries"
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for put in puts {
        validate_spec(&put.spec)?;
        if !names.insert(put.spec.name.as_str()) {
            return invalid(format!("server {:?} is named twice", put.spec.name));
        }
    }
    Ok(())
}

fn check_node(id: NodeId, addr: &str, tags: &[String]) -> Result<(), RegistryError> {
    let invalid = |reason: String| Err(RegistryError::InvalidNode { reason });
    if id == 0 {
        return invalid("node id must be at least 1".into());
    }
    if addr.is_empty() || addr.len() > MAX_ADDRESS_LEN {
        return invalid(format!("address must be 1..={MAX_ADDRESS_LEN} bytes"));
    }
    if tags.len() > MAX_LIST_ITEMS || tags.iter().any(|t| t.is_empty() || t.len() > MAX_NAME_LEN) {
        return invalid(format!(
            "at most {MAX_LIST_ITEMS} tags of 1..={MAX_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

/// Whether `text` is `len` lower-case hex digits (token ids, secrets and digests).
pub fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A token id: 16 lower-case hex digits.
pub fn check_token_id(id: &str) -> Result<(), RegistryError> {
    if !is_lower_hex(id, 16) {
        return Err(RegistryError::InvalidToken {
            reason: format!("id {id:?} is not 16 lower-case hex digits"),
        });
    }
    Ok(())
}

fn check_token(token: &TokenRecord) -> Result<(), RegistryError> {
    let invalid = |reason: String| Err(RegistryError::InvalidToken { reason });
    check_token_id(&token.id)?;
    if token.name.len() > MAX_TOKEN_TEXT || token.name.chars().any(char::is_control) {
        return invalid(format!(
            "name must be at most {MAX_TOKEN_TEXT} bytes with no control characters"
        ));
    }
    if !is_lower_hex(&token.secret_sha256, 64) {
        return invalid("the secret's digest is not 64 lower-case hex digits".into());
    }
    if token.role != Role::Caller && !(token.servers.is_empty() && token.tools.is_empty()) {
        return invalid(format!(
            "only a caller's calls are limited to servers and tools, not a {}'s",
            token.role.name()
        ));
    }
    for patterns in [&token.servers, &token.tools] {
        if patterns.len() > MAX_TOKEN_PATTERNS {
            return invalid(format!(
                "at most {MAX_TOKEN_PATTERNS} patterns of each kind"
            ));
        }
        if let Some(bad) = patterns.iter().find(|p| {
            p.is_empty() || p.len() > MAX_TOKEN_TEXT || !p.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return invalid(format!(
                "pattern {bad:?} must be 1..={MAX_TOKEN_TEXT} visible ASCII characters"
            ));
        }
    }
    Ok(())
}

fn check_session(id: &str, initialize: &str) -> Result<(), RegistryError> {
    let invalid = |reason: String| Err(RegistryError::InvalidSession { reason });
    if id.is_empty() || id.len() > MAX_NAME_LEN * 2 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid(format!(
            "id must be 1..={} visible ASCII characters",
            MAX_NAME_LEN * 2
        ));
    }
    if initialize.len() > MAX_SESSION_BYTES {
        return invalid(format!(
            "initialize parameters are {} bytes, over the {MAX_SESSION_BYTES}-byte cap",
            initialize.len()
        ));
    }
    Ok(())
}

/// Checks a server name: 1..=63 characters of `[A-Za-z0-9._-]`, starting and ending
/// with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(&format!("longer than {MAX_NAME_LEN} characters")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            "only letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    let first = name.chars().next().unwrap_or('-');
    let last = name.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(invalid("must start and end with a letter or digit"));
    }
    Ok(())
}

/// A spec's size as its limits count it: the bytes of its name, transport strings and
/// node tags.
pub fn spec_size(spec: &ServerSpec) -> usize {
    let transport = match &spec.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            command.len()
                + args.iter().map(String::len).sum::<usize>()
                + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + cwd.as_ref().map_or(0, String::len)
        }
        Transport::Http { url, headers } => {
            url.len()
                + headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        }
    };
    spec.name.len() + transport + spec.node_tags.iter().map(String::len).sum::<usize>()
}

/// Checks a whole spec: name, transport, replicas, settings and size.
pub fn validate_spec(spec: &ServerSpec) -> Result<(), RegistryError> {
    validate_name(&spec.name)?;
    let invalid = |reason: String| RegistryError::InvalidSpec {
        name: spec.name.clone(),
        reason,
    };
    match &spec.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            if command.trim().is_empty() {
                return Err(invalid("command must not be empty".into()));
            }
            if args.len() > MAX_LIST_ITEMS || env.len() > MAX_LIST_ITEMS {
                return Err(invalid(format!(
                    "at most {MAX_LIST_ITEMS} args and {MAX_LIST_ITEMS} env entries"
                )));
            }
            let strings = std::iter::once(command)
                .chain(args.iter())
                .chain(env.keys())
                .chain(env.values())
                .chain(cwd.iter());
            for s in strings {
                if s.contains('\0') {
                    return Err(invalid(
                        "command, args, env and cwd must not contain NUL".into(),
                    ));
                }
            }
            for key in env.keys() {
                if key.is_empty() || key.contains('=') {
                    return Err(invalid(format!("invalid env name {key:?}")));
                }
            }
        }
        Transport::Http { url, headers } => {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            match rest {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
                _ => {
                    return Err(invalid(format!(
                        "url {url:?} must be http:// or https:// with a host"
                    )))
                }
            }
            if headers.len() > MAX_LIST_ITEMS {
                return Err(invalid(format!("at most {MAX_LIST_ITEMS} headers")));
            }
            for (k, v) in headers {
                if k.is_empty() || k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                    return Err(invalid(format!("invalid header {k:?}")));
                }
            }
        }
    }
    if spec.replicas == 0 || spec.replicas > MAX_REPLICAS {
        return Err(invalid(format!(
            "replicas must be between 1 and {MAX_REPLICAS}, got {}",
            spec.replicas
        )));
    }
    if spec.node_tags.len() > MAX_LIST_ITEMS {
        return Err(invalid(format!("at most {MAX_LIST_ITEMS} node tags")));
    }
    for tag in &spec.node_tags {
        if tag.is_empty() || tag.len() > MAX_NAME_LEN {
            return Err(invalid(format!("invalid node tag {tag:?}")));
        }
    }
    let size = spec_size(spec);
    if size > MAX_SPEC_BYTES {
        return Err(invalid(format!(
            "spec is {size} bytes, more than the limit of {MAX_SPEC_BYTES}"
        )));
    }
    let health = &spec.health_check;
    if health.interval_ms < 100 || health.interval_ms > 3_600_000 {
        return Err(invalid(
            "health_check.interval_ms must be 100..=3600000".into(),
        ));
    }
    if health.timeout_ms < 10 || health.timeout_ms > health.interval_ms {
        return Err(invalid(
            "health_check.timeout_ms must be at least 10 and at most interval_ms".into(),
        ));
    }
    if health.healthy_threshold == 0 || health.unhealthy_threshold == 0 {
        return Err(invalid("health_check thresholds must be at least 1".into()));
    }
    let breaker = &spec.circuit_breaker;
    if breaker.failure_threshold == 0 || breaker.half_open_max_calls == 0 {
        return Err(invalid(
            "circuit_breaker.failure_threshold and half_open_max_calls must be at least 1".into(),
        ));
    }
    if breaker.open_ms < 100 || breaker.open_ms > 3_600_000 {
        return Err(invalid(
            "circuit_breaker.open_ms must be 100..=3600000".into(),
        ));
    }
    if spec.max_concurrent_calls == 0 || spec.max_concurrent_calls > MAX_CONCURRENT_CALLS {
        return Err(invalid(format!(
            "max_concurrent_calls must be between 1 and {MAX_CONCURRENT_CALLS}, got {}",
            spec.max_concurrent_calls
        )));
    }
    let restart = &spec.restart;
    if restart.initial_backoff_ms < 10
        || restart.max_backoff_ms < restart.initial_backoff_ms
        || restart.max_backoff_ms > 3_600_000
    {
        return Err(invalid(
            "restart backoff must satisfy 10 <= initial_backoff_ms <= max_backoff_ms <= 3600000"
                .into(),
        ));
    }
    if restart.crash_loop_restarts == 0 || restart.crash_loop_window_ms < 1_000 {
        return Err(invalid(
            "restart.crash_loop_restarts must be at least 1 and crash_loop_window_ms at least 1000"
                .into(),
        ));
    }
    Ok(())
}
