//! `mcpfleet import` and `mcpfleet export`: the `mcpServers` files of MCP clients in
//! and out of the registry (the format is in `mcpservers`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::client::{connect, CliError, Client};
use super::mcpservers::{self, Variables, MAX_FILE_BYTES};
use super::output::{print_json, print_table, server_row, ServerJson};
use super::{ClientArgs, OutputFormat};
use crate::api::convert::{parse_pairs, spec_from_proto, spec_to_proto, Secrets};
use crate::proto::v1 as pb;
use crate::registry::{ServerSpec, MAX_SERVERS_PER_WRITE};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An `mcpServers` file (Claude Desktop, Claude Code, Cursor) or a VS Code
    /// `mcp.json`.
    pub file: PathBuf,
    /// Show what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the transport of servers that exist already (their other settings are
    /// kept). Without it, existing servers are left as they are.
    #[arg(long)]
    pub replace: bool,
    /// The value of a VS Code input the file names as `${input:ID}`, ID=VALUE (repeat
    /// for more).
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// An env variable or header of the file's servers to store as a secret, by name
    /// (repeat for more): sealed with the cluster's secrets key, as `server add
    /// --secret-env` does, and shown as <secret> in this command's output.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Write to this file (created with mode 0600, as it may hold secrets) instead of
    /// standard output.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// What an import does to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Add,
    Replace,
    /// It exists with other settings, and `--replace` was not given.
    Keep,
    /// It exists as the file describes it.
    Unchanged,
}

#[derive(serde::Serialize)]
struct Planned {
    action: Action,
    #[serde(flatten)]
    spec: ServerSpec,
    /// The revision the write expects the server at (0: absent).
    #[serde(skip)]
    expected_revision: u64,
}

pub async fn run_import(args: ImportArgs, client_args: &ClientArgs) -> Result<(), CliError> {
    let json = client_args.output == OutputFormat::Json;
    let text = read_text(&args.file)?;
    let inputs: BTreeMap<String, String> = parse_pairs(&args.inputs, "--input")
        .map_err(CliError::Usage)?
        .into_iter()
        .collect();
    let env = |name: &str| std::env::var(name).ok();
    let parsed = mcpservers::parse(
        &text,
        &Variables {
            inputs: &inputs,
            env: &env,
            workspace: workspace_of(&args.file),
        },
    )
    .map_err(|e| CliError::Failed(format!("{}: {e}", args.file.display())))?;
    for ignored in &parsed.ignored {
        eprintln!("note: ignored {ignored}");
    }
    let client = connect(client_args)?;
    let current = current_specs(&client).await?;
    let plan: Vec<Planned> = parsed
        .servers
        .iter()
        .map(|(name, entry)| match current.get(name) {
            None => Planned {
                action: Action::Add,
                spec: entry.spec(name),
                expected_revision: 0,
            },
            Some((spec, revision)) => {
                let merged = entry.merged_into(spec);
                let action = match (merged == *spec, args.replace) {
                    (true, _) => Action::Unchanged,
                    (false, true) => Action::Replace,
                    (false, false) => Action::Keep,
                };
                Planned {
                    action,
                    spec: if action == Action::Replace {
                        merged
                    } else {
                        spec.clone()
                    },
                    expected_revision: *revision,
                }
            }
        })
        .collect();
    let writes: Vec<&Planned> = plan
        .iter()
        .filter(|p| matches!(p.action, Action::Add | Action::Replace))
        .collect();
    if writes.len() > MAX_SERVERS_PER_WRITE {
        return Err(CliError::Failed(format!(
            "the import writes {} servers, and one write takes at most \
             {MAX_SERVERS_PER_WRITE}: split the file",
            writes.len()
        )));
    }
    let revision = if args.dry_run || writes.is_empty() {
        None
    } else {
        let puts = writes
            .iter()
            .map(|p| pb::PutServerRequest {
                spec: Some(with_secrets(spec_to_proto(&p.spec), &args.secrets)),
                expected_revision: Some(p.expected_revision),
            })
            .collect();
        let response = client.put_servers(puts).await?;
        Some(response.revision)
    };
    let written = writes.len();
    let plan: Vec<Planned> = plan
        .into_iter()
        .map(|mut p| {
            redact(&mut p.spec, &args.secrets);
            p
        })
        .collect();
    if json {
        return print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "revision": revision,
            "servers": plan,
        }))
        .map_err(CliError::Failed);
    }
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|p| {
            let row = server_row(&ServerJson {
                spec: p.spec.clone(),
                create_revision: 0,
                mod_revision: 0,
            });
            let action = serde_json::to_value(p.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            vec![row[0].clone(), action, row[2].clone(), row[3].clone()]
        })
        .collect();
    print_table(&["NAME", "ACTION", "TRANSPORT", "TARGET"], &rows);
    let kept = plan.iter().filter(|p| p.action == Action::Keep).count();
    if kept > 0 {
        println!("{kept} existing server(s) differ from the file and were kept (--replace replaces them)");
    }
    match revision {
        Some(revision) => {
            println!("imported {written} server(s) in one write (revision {revision})")
        }
        None if args.dry_run => println!("dry run: nothing was written"),
        None => println!("nothing to change"),
    }
    Ok(())
}

pub async fn run_export(args: ExportArgs, client_args: &ClientArgs) -> Result<(), CliError> {
    let client = connect(client_args)?;
    let specs: Vec<ServerSpec> = current_specs(&client)
        .await?
        .into_values()
        .map(|(spec, _)| spec)
        .collect();
    let text = serde_json::to_string_pretty(&mcpservers::render(&specs))
        .map_err(|e| CliError::Failed(e.to_string()))?
        + "\n";
    match args.file {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => {
            write_private(&path, text.as_bytes())
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("exported {} server(s) to {}", specs.len(), path.display());
            Ok(())
        }
    }
}

/// `spec` with the env values and headers named in `secrets` (and not sealed yet)
/// moved to the values the node seals.
fn with_secrets(mut spec: pb::ServerSpec, secrets: &[String]) -> pb::ServerSpec {
    let take = |plain: &mut std::collections::HashMap<String, String>,
                secret: &mut std::collections::HashMap<String, String>| {
        for name in secrets {
            if plain
                .get(name)
                .is_some_and(|v| !crate::secrets::is_sealed(v))
            {
                if let Some(value) = plain.remove(name) {
                    secret.insert(name.clone(), value);
                }
            }
        }
    };
    match &mut spec.transport {
        Some(pb::server_spec::Transport::Stdio(stdio)) => {
            take(&mut stdio.env, &mut stdio.secret_env)
        }
        Some(pb::server_spec::Transport::Http(http)) => {
            take(&mut http.headers, &mut http.secret_headers)
        }
        None => {}
    }
    spec
}

/// `spec` as this command shows it: the values named in `secrets`, and sealed ones,
/// as <secret>.
fn redact(spec: &mut ServerSpec, secrets: &[String]) {
    let values = match &mut spec.transport {
        crate::registry::Transport::Stdio { env, .. } => env,
        crate::registry::Transport::Http { headers, .. } => headers,
    };
    for (name, value) in values.iter_mut() {
        if secrets.contains(name) || crate::secrets::is_sealed(value) {
            *value = crate::secrets::REDACTED.to_string();
        }
    }
}

/// Every server's spec and revision, as of a linearizable read.
async fn current_specs(client: &Client) -> Result<BTreeMap<String, (ServerSpec, u64)>, CliError> {
    client
        .list_servers(false)
        .await?
        .into_iter()
        .map(|server| {
            let spec = server
                .spec
                .ok_or_else(|| CliError::Failed("server without a spec in the answer".into()))?;
            let spec = spec_from_proto(spec, Secrets::AsGiven).map_err(CliError::Failed)?;
            Ok((spec.name.clone(), (spec, server.mod_revision)))
        })
        .collect()
}

/// A file's text, refused beyond `MAX_FILE_BYTES` without reading it all.
fn read_text(path: &Path) -> Result<String, CliError> {
    let bytes = read_capped(path, MAX_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|e| CliError::Failed(format!("{}: not UTF-8: {e}", path.display())))
}

/// A file's bytes, refused beyond `cap` without reading it all.
pub(super) fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, CliError> {
    let failed =
        |e: std::io::Error| CliError::Failed(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() > cap {
        return Err(CliError::Failed(format!(
            "{}: over the {cap}-byte cap",
            path.display()
        )));
    }
    Ok(bytes)
}

/// `${workspaceFolder}` of a VS Code file: the folder holding `.vscode/`, or the file's
/// own folder.
fn workspace_of(file: &Path) -> Option<String> {
    let dir = std::path::absolute(file).ok()?.parent()?.to_path_buf();
    let dir = match dir.file_name() {
        Some(name) if name == ".vscode" => dir.parent()?.to_path_buf(),
        _ => dir,
    };
    Some(dir.to_string_lossy().into_owned())
}

/// Writes `bytes` to `path` through a file beside it, readable only by its owner, so
/// that a reader never sees half a file.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let temporary = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
