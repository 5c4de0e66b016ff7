//! The entry points of the fuzz targets (tests/fuzz, cargo-fuzz): each takes bytes
//! from the outside world through the code that reads them in production, and must
//! neither panic nor hang, whatever the bytes. A finding becomes a regression input
//! in tests/fuzz/regressions/TARGET/, which `cargo test --lib fuzzing` replays.
//!
//! - `client_request`: the client API's messages (protobuf), through the conversion
//!   and validation a write goes through, sealing included.
//! - `internal_message`: the node-to-node API's messages (protobuf, then the tagged
//!   bincode of Raft requests and leader operations).
//! - `snapshot`: snapshot and backup files.
//! - `mcpservers`: the `mcpServers` files `mcpfleet import` reads.
//! - `headers`: what a client puts in headers: MCP session ids, bearer tokens.
//! - `upstream`: what an MCP server sends: JSON-RPC messages, and the lists it offers
//!   as the catalog reads them into the fleet's tools.

use prost::Message;

use crate::api::convert::{spec_from_proto, token_from_proto, Secrets};
use crate::proto::{internal as ipb, v1 as pb};
use crate::registry::{Catalog, Command, Registry};
use crate::secrets::SecretsKey;

/// The names of the targets, as tests/fuzz names its binaries.
pub const TARGETS: [&str; 6] = [
    "client_request",
    "internal_message",
    "snapshot",
    "mcpservers",
    "headers",
    "upstream",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "client_request" => client_request(data),
        "internal_message" => internal_message(data),
        "snapshot" => snapshot(data),
        "mcpservers" => mcpservers(data),
        "headers" => headers(data),
        "upstream" => upstream(data),
        _ => return false,
    }
    true
}

fn key() -> SecretsKey {
    SecretsKey::from_bytes(&[7; crate::secrets::KEY_BYTES])
}

/// A spec from the wire as a write takes it: converted (secrets sealed), validated,
/// and the command checked and applied to an empty registry.
fn write_spec(spec: pb::ServerSpec, key: &SecretsKey) {
    let Ok(spec) = spec_from_proto(spec, Secrets::Seal(Some(key))) else {
        return;
    };
    if crate::registry::validate::validate_spec(&spec).is_err() {
        return;
    }
    let command = Command::PutServer {
        spec,
        expected_revision: None,
    };
    if command.check().is_ok() {
        let mut registry = Registry::default();
        let _ = registry.apply(&command);
        assert_eq!(registry.check_invariants(), Ok(()));
    }
}

pub fn client_request(data: &[u8]) {
    let key = key();
    if let Ok(request) = pb::PutServerRequest::decode(data) {
        if let Some(spec) = request.spec {
            write_spec(spec, &key);
        }
    }
    if let Ok(request) = pb::PutServersRequest::decode(data) {
        for put in request.puts.into_iter().take(4) {
            if let Some(spec) = put.spec {
                write_spec(spec, &key);
            }
        }
    }
    if let Ok(request) = pb::CreateTokenRequest::decode(data) {
        if let Ok(token) = token_from_proto(request) {
            let command = Command::CreateToken { token, first: true };
            if command.check().is_ok() {
                let _ = Registry::default().apply(&command);
            }
        }
    }
    if let Ok(request) = pb::CallToolRequest::decode(data) {
        if let Ok(serde_json::Value::Object(arguments)) =
            serde_json::from_str::<serde_json::Value>(&request.arguments_json)
        {
            let mut params = rmcp::model::CallToolRequestParams::new(request.tool);
            params.arguments = Some(arguments);
            let _ = serde_json::to_string(&params);
        }
    }
    if let Ok(request) = pb::ListServersRequest::decode(data) {
        let servers = std::collections::BTreeMap::new();
        let _ = crate::api::paging::page(
            &servers,
            &request.page_token,
            request.page_size,
            crate::api::convert::record_to_proto,
        );
    }
    let _ = pb::WatchServersRequest::decode(data);
}

pub fn internal_message(data: &[u8]) {
    use crate::raft::codec::decode;
    use crate::raft::{LogId, NodeId, TypeConfig};
    if let Ok(message) = ipb::RaftMessage::decode(data) {
        let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&message.payload);
        let _ = decode::<openraft::raft::VoteRequest<NodeId>>(&message.payload);
        let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&message.payload);
    }
    let _ = decode::<crate::control::LeaderOp>(data);
    let _ = decode::<crate::raft::Batch>(data);
    let _ = decode::<Option<LogId>>(data);
}

pub fn snapshot(data: &[u8]) {
    if let Ok(mut registry) = crate::raft::codec::decode::<Registry>(data) {
        registry.recount();
        let _ = registry.check_invariants();
    }
    if let Ok(backup) = crate::raft::backup::decode_backup(data) {
        let _ = backup.registry.check_invariants();
    }
}

pub fn mcpservers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let inputs = std::collections::BTreeMap::from([("key".to_string(), "v".to_string())]);
    let env = |name: &str| (name == "HOME").then(|| "/home/fuzz".to_string());
    let variables = crate::cli::mcpservers::Variables {
        inputs: &inputs,
        env: &env,
        workspace: Some("/work".into()),
    };
    if let Ok(parsed) = crate::cli::mcpservers::parse(text, &variables) {
        for (name, entry) in parsed.servers.iter().take(8) {
            let spec = entry.spec(name);
            let _ = crate::registry::validate::validate_spec(&spec);
            let _ = crate::cli::mcpservers::render([&spec]);
        }
    }
}

pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::auth::bearer(&text).and_then(crate::auth::parse_token);
    let _ = crate::auth::parse_token(&text);
    let (pattern, name) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = crate::auth::glob_match(pattern, name);
    let command = Command::PutSession {
        id: text.to_string(),
        initialize: "{}".into(),
    };
    if command.check().is_ok() {
        let mut registry = Registry::default();
        let _ = registry.apply(&command);
        let _ = registry.apply(&Command::DeleteSession {
            id: text.to_string(),
        });
    }
    let _ = key().open("s", "env A", &text);
}

pub fn upstream(data: &[u8]) {
    let _ = serde_json::from_slice::<rmcp::model::ServerJsonRpcMessage>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = Catalog {
        transport_revision: 1,
        server_info: text.to_string(),
        tools: text.to_string(),
        prompts: text.to_string(),
        resources: text.to_string(),
    };
    let command = Command::ReportCatalog {
        server: "s".into(),
        slot: 0,
        epoch: 1,
        node_id: 1,
        catalog: catalog.clone(),
    };
    let _ = command.check();
    let aggregate = crate::gateway::catalog::aggregate_of(&[("s".to_string(), catalog)], "__");
    let _ = crate::gateway::catalog::page(&aggregate.tools, Some(text));
    let _ = crate::gateway::catalog::page(&aggregate.resources, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input kept under tests/fuzz/regressions/TARGET/ (the findings, and seeds)
    /// runs through its target.
    #[test]
    fn the_kept_inputs_of_every_target_run_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions");
        let mut ran = 0;
        for target in TARGETS {
            let Ok(entries) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                assert!(run(target, &std::fs::read(&path).unwrap()), "{target}");
                ran += 1;
            }
        }
        assert!(ran > 0, "no kept inputs under {}", root.display());
    }

    /// Seeds for each target, as real inputs of its kind: written to
    /// tests/fuzz/regressions/TARGET/seed-N with MCPFLEET_WRITE_FUZZ_SEEDS=1.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::registry::ServerSpec;
        let mut spec = crate::api::convert::spec_to_proto(&ServerSpec::stdio(
            "github",
            "npx",
            &["-y", "@modelcontextprotocol/server-github"],
        ));
        if let Some(pb::server_spec::Transport::Stdio(stdio)) = &mut spec.transport {
            stdio.env.insert("LOG".into(), "debug".into());
            stdio.secret_env.insert("TOKEN".into(), "ghp_x".into());
        }
        let put = pb::PutServerRequest {
            spec: Some(spec),
            expected_revision: Some(0),
        }
        .encode_to_vec();
        let (_, token) = crate::auth::new_token(
            "ci",
            crate::registry::Role::Caller,
            vec!["git*".into()],
            vec!["search_*".into()],
            [3; 40],
        );
        let create = pb::CreateTokenRequest {
            token: Some(crate::api::convert::token_to_proto(&token)),
            secret_sha256: token.secret_sha256.clone(),
        }
        .encode_to_vec();
        let mut registry = Registry::default();
        let _ = registry.apply(&Command::PutServer {
            spec: ServerSpec::stdio("time", "uvx", &["mcp-server-time"]),
            expected_revision: None,
        });
        let vote = crate::raft::codec::encode(&openraft::raft::VoteRequest::<u64>::new(
            openraft::Vote::new(3, 1),
            None,
        ))
        .unwrap();
        let raft = ipb::RaftMessage {
            payload: vote,
            id: 1,
            kind: 2,
        }
        .encode_to_vec();
        vec![
            ("client_request", put),
            ("client_request", create),
            ("internal_message", raft),
            ("snapshot", crate::raft::codec::encode(&registry).unwrap()),
            ("snapshot", crate::raft::backup::encode_backup(&registry).unwrap()),
            (
                "mcpservers",
                br#"{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "${env:HOME}"}}, "web": {"url": "http://127.0.0.1:9/mcp", "headers": {"X": "${input:key}"}}}}"#.to_vec(),
            ),
            (
                "headers",
                format!("Bearer mcpf_{}_{}", "a".repeat(16), "b".repeat(64)).into_bytes(),
            ),
            ("headers", b"every*\neverything".to_vec()),
            (
                "upstream",
                br#"[{"name":"echo","description":"Echoes","inputSchema":{"type":"object","properties":{"message":{"type":"string"}}}}]"#.to_vec(),
            ),
            (
                "upstream",
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add","inputSchema":{"type":"object"}}]}}"#.to_vec(),
            ),
        ]
    }

    #[test]
    fn seeds_are_kept_for_every_target() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions");
        let seeds = seeds();
        for target in TARGETS {
            assert!(
                seeds.iter().any(|(t, _)| *t == target),
                "no seed for {target}"
            );
        }
        let mut count = std::collections::BTreeMap::new();
        for (target, bytes) in seeds {
            assert!(run(target, &bytes));
            let n = count.entry(target).or_insert(0);
            *n += 1;
            let path = root.join(target).join(format!("seed-{n}"));
            if std::env::var_os("MCPFLEET_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(bytes),
                "{} is not the seed: run MCPFLEET_WRITE_FUZZ_SEEDS=1 cargo test --lib fuzzing",
                path.display()
            );
        }
    }

    #[test]
    fn each_target_takes_empty_and_random_bytes() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for target in TARGETS {
            assert!(run(target, &[]));
            for len in [1, 7, 64, 1_000] {
                let mut bytes = vec![0u8; len];
                rng.fill_bytes(&mut bytes);
                assert!(run(target, &bytes));
            }
        }
        assert!(!run("nothing", &[]));
    }
}
