//! `mcpfleet token bootstrap|create|ls|revoke`: the bearer tokens of a cluster whose
//! nodes run with `--auth` (src/auth). The secret of a new token is made here, from
//! the operating system's randomness, and printed once; the nodes get only its
//! SHA-256. And `mcpfleet secrets-key FILE`, the cluster's key for secret values
//! (src/secrets), made from the same randomness.

use clap::Subcommand;

use super::client::{connect, CliError, Client};
use super::output::{print_json, print_table};
use super::{ClientArgs, OutputFormat};
use crate::proto::v1 as pb;
use crate::registry::Role;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make the cluster's first token, an admin's. Needs no token, and works only
    /// while the cluster has none.
    Bootstrap {
        /// What the token is for.
        #[arg(long, default_value = "bootstrap")]
        name: String,
    },
    /// Make a token (needs an admin's token).
    Create {
        /// reader, caller, operator or admin.
        #[arg(long)]
        role: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        name: String,
        /// For a caller: a server it may call, a pattern with `*` (repeat for more;
        /// default: any).
        #[arg(long = "server")]
        servers: Vec<String>,
        /// For a caller: a tool (the server's own name for it) it may call, a pattern
        /// with `*` (repeat for more; default: any).
        #[arg(long = "tool")]
        tools: Vec<String>,
    },
    /// List the tokens (never their secrets).
    Ls,
    /// Revoke a token: every node refuses it within a second.
    Revoke { id: String },
}

/// `N` bytes of the operating system's randomness (a token's id and secret, a
/// secrets key).
pub(super) fn os_random<const N: usize>() -> Result<[u8; N], CliError> {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CliError::Failed(format!("no randomness from the system: {e}")))?;
    Ok(bytes)
}

pub async fn run_token(command: TokenCommand, args: &ClientArgs) -> Result<(), CliError> {
    let json = args.output == OutputFormat::Json;
    let client = &connect(args)?;
    let (name, role, servers, tools, first) = match command {
        TokenCommand::Ls => return list(client, json).await,
        TokenCommand::Revoke { id } => {
            let revision = client.revoke_token(&id).await?;
            if json {
                print_json(&serde_json::json!({"id": id, "revision": revision}))
                    .map_err(CliError::Failed)?;
            } else {
                println!("token {id} revoked (revision {revision})");
            }
            return Ok(());
        }
        TokenCommand::Bootstrap { name } => (name, Role::Admin, vec![], vec![], true),
        TokenCommand::Create {
            role,
            name,
            servers,
            tools,
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                CliError::Usage(format!(
                    "--role {role:?}: takes reader, caller, operator or admin"
                ))
            })?;
            (name, role, servers, tools, false)
        }
    };
    let (text, record) = crate::auth::new_token(&name, role, servers, tools, os_random()?);
    let token = crate::api::convert::token_to_proto(&record);
    let revision = client
        .create_token(token.clone(), record.secret_sha256, first)
        .await?;
    if json {
        print_json(&serde_json::json!({
            "id": record.id,
            "role": role.name(),
            "token": text,
            "revision": revision,
        }))
        .map_err(CliError::Failed)?;
    } else {
        // The token itself alone on stdout, for `TOKEN=$(mcpfleet token create ...)`.
        eprintln!(
            "token {} ({}) created at revision {revision}; it is shown only this once:",
            record.id,
            role.name()
        );
        println!("{text}");
    }
    Ok(())
}

async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let tokens = client.list_tokens().await?;
    let scope = |patterns: &[String]| match patterns {
        [] => "*".to_string(),
        some => some.join(","),
    };
    if json {
        let views: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t: &pb::Token| {
                serde_json::json!({
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "servers": t.servers,
                    "tools": t.tools,
                    "create_revision": t.create_revision,
                })
            })
            .collect();
        return print_json(&views).map_err(CliError::Failed);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.role.clone(),
                scope(&t.servers),
                scope(&t.tools),
                t.create_revision.to_string(),
                t.name.clone(),
            ]
        })
        .collect();
    print_table(
        &["ID", "ROLE", "SERVERS", "TOOLS", "CREATED", "NAME"],
        &rows,
    );
    Ok(())
}

/// Writes a new secrets key (64 hex digits) to `file`, which must not exist.
pub fn write_secrets_key(file: &std::path::Path) -> Result<(), CliError> {
    let key: [u8; crate::secrets::KEY_BYTES] = os_random()?;
    let hex = crate::auth::to_hex(&key);
    super::cert::write_new(file, &format!("{hex}\n"), true)?;
    eprintln!(
        "wrote a secrets key to {}: give every node this same file \
         (serve --secrets-key-file), and keep a copy: without it no sealed value opens",
        file.display()
    );
    Ok(())
}

/// `mcpfleet audit`: the audit log's entries after `since`, oldest first.
pub async fn run_audit(since: u64, args: &ClientArgs) -> Result<(), CliError> {
    let client = connect(args)?;
    let answer = client.list_audit(since).await?;
    if args.output == OutputFormat::Json {
        let entries: Vec<serde_json::Value> = answer
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "revision": e.revision,
                    "stamp_ms": e.stamp_ms,
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "entries": entries,
            "revision": answer.revision,
            "oldest_revision": answer.oldest_revision,
        }))
        .map_err(CliError::Failed);
    }
    let rows: Vec<Vec<String>> = answer
        .entries
        .iter()
        .map(|e| {
            vec![
                e.revision.to_string(),
                utc(e.stamp_ms),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
            ]
        })
        .collect();
    print_table(
        &["REVISION", "TIME (UTC)", "ACTOR", "ACTION", "TARGET"],
        &rows,
    );
    if since > 0 && answer.oldest_revision > since + 1 {
        println!(
            "(entries up to revision {} were dropped: the log keeps the last {})",
            answer.oldest_revision - 1,
            crate::registry::MAX_AUDIT_ENTRIES
        );
    }
    Ok(())
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm`.
fn utc(ms: u64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}
