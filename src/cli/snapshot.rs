//! `mcpfleet snapshot save | restore | status`: backups of the registry, as etcdctl's
//! snapshot commands do them (the file format is in `raft::backup`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use tokio_stream::StreamExt;

use super::client::{connect, CliError};
use super::output::print_json;
use super::{ClientArgs, OutputFormat};
use crate::config::{parse_initial_cluster, DEFAULT_LISTEN};
use crate::env::{Disk, SledDisk};
use crate::raft::backup::{self, Backup, MAX_BACKUP_BYTES};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save the registry, as of one revision, from any node to FILE (mode 0600).
    Save {
        file: PathBuf,
        /// Save the node's own applied state without confirming it is current (for a
        /// cluster that has lost its majority).
        #[arg(long)]
        stale: bool,
    },
    /// Make a new data dir hold a saved registry, for one member of a new cluster:
    /// restore the same file once per member, then start each with `serve`.
    Restore(RestoreArgs),
    /// Check a saved file and say what it holds.
    Status { file: PathBuf },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub file: PathBuf,
    /// The data dir to create (it must not exist, or be empty).
    #[arg(long = "data")]
    pub data_dir: PathBuf,
    /// The id of the node that will run on this data dir.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// The members of the new cluster, 1=HOST:PORT,2=HOST:PORT,... (default: this node
    /// alone, at --listen).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// This node's address when it is alone.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
}

pub async fn run_snapshot(command: SnapshotCommand, client: &ClientArgs) -> Result<(), CliError> {
    let json = client.output == OutputFormat::Json;
    match command {
        SnapshotCommand::Save { file, stale } => save(&file, stale, client, json).await,
        SnapshotCommand::Restore(args) => restore(args, json).await,
        SnapshotCommand::Status { file } => {
            let backup = read(&file)?;
            report(json, "file", &file, &backup, None)
        }
    }
}

async fn save(file: &Path, stale: bool, client: &ClientArgs, json: bool) -> Result<(), CliError> {
    let mut stream = connect(client)?.save_snapshot(stale).await?;
    let mut bytes = Vec::new();
    let mut total = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if total.is_none() {
            total = Some(chunk.total_bytes);
        }
        if bytes.len() + chunk.data.len() > MAX_BACKUP_BYTES {
            return Err(CliError::Failed(format!(
                "the node sent more than the {MAX_BACKUP_BYTES} bytes a backup holds"
            )));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    if total != Some(bytes.len() as u64) {
        return Err(CliError::Failed(format!(
            "the node's answer ended after {} of {} bytes",
            bytes.len(),
            total.unwrap_or(0)
        )));
    }
    // What is written is checked as `restore` will check it.
    let backup = backup::decode_backup(&bytes)
        .map_err(|e| CliError::Failed(format!("the node sent a bad backup: {e}")))?;
    super::import::write_private(file, &bytes)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", file.display())))?;
    report(json, "saved", file, &backup, None)
}

fn read(file: &Path) -> Result<Backup, CliError> {
    let bytes = super::import::read_capped(file, MAX_BACKUP_BYTES)?;
    backup::decode_backup(&bytes).map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))
}

async fn restore(args: RestoreArgs, json: bool) -> Result<(), CliError> {
    let usage = |e: crate::config::ConfigError| CliError::Usage(e.to_string());
    let members = match &args.initial_cluster {
        Some(text) => parse_initial_cluster(text).map_err(usage)?,
        None => [(args.id, args.listen.clone())].into_iter().collect(),
    };
    if !members.contains_key(&args.id) {
        return Err(CliError::Usage(format!(
            "node {} is not a member of --initial-cluster",
            args.id
        )));
    }
    let backup = read(&args.file)?;
    let dir = &args.data_dir;
    let in_use = std::fs::read_dir(dir).map(|mut entries| entries.next().is_some());
    if matches!(in_use, Ok(true)) {
        return Err(CliError::Failed(format!(
            "data dir {} is not empty: restore makes a new data dir",
            dir.display()
        )));
    }
    let failed = |e: &dyn std::fmt::Display| {
        CliError::Failed(format!("cannot restore into {}: {e}", dir.display()))
    };
    let disk: Arc<dyn Disk> = Arc::new(SledDisk::open(dir).map_err(|e| failed(&e))?);
    crate::raft::format::check_or_record(disk.as_ref())
        .await
        .map_err(|e| failed(&e))?;
    super::serve::claim_data_dir(disk.as_ref(), args.id, dir).await?;
    backup::restore_into(disk.clone(), backup.clone(), args.id, members.clone())
        .await
        .map_err(|e| failed(&e))?;
    drop(disk);
    report(json, "restored", dir, &backup, Some((args.id, &members)))
}

/// Says what a backup holds, and where it went.
fn report(
    json: bool,
    done: &str,
    path: &Path,
    backup: &Backup,
    restored: Option<(u64, &std::collections::BTreeMap<u64, String>)>,
) -> Result<(), CliError> {
    let registry = &backup.registry;
    if json {
        let mut value = serde_json::json!({
            done: path.display().to_string(),
            "revision": registry.revision,
            "servers": registry.servers.keys().collect::<Vec<_>>(),
            "sessions": registry.sessions.len(),
        });
        if let Some((id, members)) = restored {
            value["id"] = id.into();
            value["members"] = serde_json::json!(members);
        }
        return print_json(&value).map_err(CliError::Failed);
    }
    let mut out = std::io::stdout().lock();
    let line = match restored {
        None => format!(
            "{done} {}: revision {}, {} server(s), {} session(s)",
            path.display(),
            registry.revision,
            registry.servers.len(),
            registry.sessions.len()
        ),
        Some((id, members)) => {
            let members: Vec<String> = members.iter().map(|(i, a)| format!("{i}={a}")).collect();
            format!(
                "restored revision {} ({} server(s)) into {} for node {id} of {}; start it with \
                 `mcpfleet serve --id {id} --data {}` and its other flags",
                registry.revision,
                registry.servers.len(),
                path.display(),
                members.join(","),
                path.display()
            )
        }
    };
    writeln!(out, "{line}").map_err(|e| CliError::Failed(e.to_string()))
}
