//! The `mcpServers` JSON that MCP clients keep their servers in, read and written.
//!
//! Read, in the dialects of:
//! - Claude Desktop and Cursor: `{"mcpServers": {NAME: {"command", "args", "env"}}}`,
//!   or `{"url", "headers"}` for a server reached over HTTP;
//! - Claude Code (`.mcp.json`): the same, with `"type": "stdio" | "http"`;
//! - VS Code (`.vscode/mcp.json`, or `"mcp"` in its settings): `{"servers": {...},
//!   "inputs": [...]}`, where values may name an input as `${input:ID}`.
//!
//! Values may also use `${env:NAME}`, `${NAME}` or `${NAME:-default}` (the importing
//! shell's environment), `${userHome}` and `${workspaceFolder}`; each is resolved when
//! the file is read, so the registry holds what the server gets. An optional
//! `"mcpfleet": {"replicas": N, "nodeTags": [...]}` in an entry carries what only the
//! fleet knows; `export` writes it where it differs from the default.
//!
//! A file that is not valid JSON, or an entry of the wrong shape, is refused with its
//! line, column and the path of the field (`mcpServers.time.args`), and nothing of it
//! is used.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::registry::validate::{validate_name, validate_spec};
use crate::registry::{ServerSpec, Transport};

/// The largest file read.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum McpServersError {
    /// The file is not JSON, or a field has the wrong shape.
    #[error("line {line} column {column}: {path}: {reason}")]
    Malformed {
        line: usize,
        column: usize,
        path: String,
        reason: String,
    },
    /// A field's value cannot be used as it is.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("the file is {size} bytes, over the {MAX_FILE_BYTES}-byte cap")]
    TooLarge { size: usize },
}

/// Where the `${...}` variables of a file come from.
pub struct Variables<'a> {
    /// `--input ID=VALUE` of the import command.
    pub inputs: &'a BTreeMap<String, String>,
    /// An environment variable, or `None`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `${workspaceFolder}`, if known.
    pub workspace: Option<String>,
}

/// One server of a file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub transport: Transport,
    /// The `mcpfleet` extension's replica count, if given.
    pub replicas: Option<u32>,
    /// The `mcpfleet` extension's node tags, if given.
    pub node_tags: Option<Vec<String>>,
}

/// What a file held: its servers in name order, and the fields that were ignored.
#[derive(Debug, Default)]
pub struct Parsed {
    pub servers: BTreeMap<String, Entry>,
    /// Fields no client of the fleet uses (`"disabled"`, `"autoApprove"`...), as paths,
    /// and servers left out because they are disabled.
    pub ignored: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<BTreeMap<Name, RawEntry>>,
    servers: Option<BTreeMap<Name, RawEntry>>,
    inputs: Option<Vec<Input>>,
    /// VS Code's settings.json keeps the same under `"mcp"`.
    mcp: Option<Box<File>>,
}

/// A server's name, checked where it stands in the file.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        validate_name(&name).map_err(serde::de::Error::custom)?;
        Ok(Name(name))
    }
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: Option<String>,
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, EnvValue>>,
    cwd: Option<String>,
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(rename = "envFile")]
    env_file: Option<Value>,
    disabled: Option<bool>,
    mcpfleet: Option<Extension>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Extension {
    replicas: Option<u32>,
    node_tags: Option<Vec<String>>,
}

/// VS Code allows numbers (and null, meaning unset) as environment values.
#[derive(Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Text(String),
    Number(serde_json::Number),
    Unset(()),
}

#[derive(Deserialize)]
struct Input {
    id: String,
    default: Option<String>,
}

/// Reads a file's text. Nothing is resolved against the cluster.
pub fn parse(text: &str, variables: &Variables) -> Result<Parsed, McpServersError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(McpServersError::TooLarge { size: text.len() });
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let file: File = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        // The path ends in `?` where the error is in a key not yet read.
        let path = e.path().to_string();
        let path = match path.trim_end_matches(".?").trim_end_matches('?') {
            "" | "." => "the file".to_string(),
            known => known.to_string(),
        };
        let inner = e.into_inner();
        McpServersError::Malformed {
            line: inner.line(),
            column: inner.column(),
            path,
            reason: reason_of(&inner),
        }
    })?;
    deserializer.end().map_err(|e| McpServersError::Malformed {
        line: e.line(),
        column: e.column(),
        path: "the file".into(),
        reason: reason_of(&e),
    })?;
    let (file, prefix) = match file.mcp {
        Some(inner) if file.mcp_servers.is_none() && file.servers.is_none() => (*inner, "mcp."),
        _ => (file, ""),
    };
    let (servers, key) = match (file.mcp_servers, file.servers) {
        (Some(servers), None) => (servers, "mcpServers"),
        (None, Some(servers)) => (servers, "servers"),
        (Some(_), Some(_)) => {
            return Err(McpServersError::Invalid {
                path: "the file".into(),
                reason: "it has both \"mcpServers\" and \"servers\"; keep one".into(),
            })
        }
        (None, None) => {
            return Err(McpServersError::Invalid {
                path: "the file".into(),
                reason: "it has no \"mcpServers\" (Claude, Cursor) or \"servers\" (VS Code) \
                         object"
                    .into(),
            })
        }
    };
    let mut inputs: BTreeMap<String, String> = file
        .inputs
        .unwrap_or_default()
        .into_iter()
        .filter_map(|input| input.default.map(|value| (input.id, value)))
        .collect();
    inputs.extend(variables.inputs.clone());
    let resolve = Resolver {
        inputs: &inputs,
        variables,
    };
    let mut parsed = Parsed::default();
    for (Name(name), raw) in servers {
        let path = format!("{prefix}{key}.{name}");
        for field in raw.other.keys() {
            parsed.ignored.push(format!("{path}.{field}"));
        }
        if raw.disabled == Some(true) {
            parsed.ignored.push(format!("{path} (disabled)"));
            continue;
        }
        let entry = entry(&path, raw, &resolve)?;
        let spec = entry.spec(&name);
        validate_spec(&spec).map_err(|e| McpServersError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        parsed.servers.insert(name, entry);
    }
    Ok(parsed)
}

/// serde_json's message without its own " at line L column C".
fn reason_of(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn entry(path: &str, raw: RawEntry, resolve: &Resolver) -> Result<Entry, McpServersError> {
    let invalid = |field: &str, reason: String| McpServersError::Invalid {
        path: if field.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{field}")
        },
        reason,
    };
    if raw.env_file.is_some() {
        return Err(invalid(
            "envFile",
            "is not read by mcpfleet: put the variables in \"env\"".into(),
        ));
    }
    let kind = match raw.kind.as_deref() {
        None => None,
        Some("stdio") => Some(false),
        Some("http" | "streamable-http" | "streamableHttp") => Some(true),
        Some("sse") => {
            return Err(invalid(
                "type",
                "\"sse\" is the older HTTP+SSE transport, which mcpfleet does not speak; \
                 it reaches servers over streamable HTTP (\"http\")"
                    .into(),
            ))
        }
        Some(other) => {
            return Err(invalid(
                "type",
                format!("{other:?} is not a transport: use \"stdio\" or \"http\""),
            ))
        }
    };
    let stdio_fields = raw.command.is_some() || raw.args.is_some() || raw.env.is_some();
    let http_fields = raw.url.is_some() || raw.headers.is_some();
    let http = match (kind, stdio_fields, http_fields) {
        (_, true, true) => {
            return Err(invalid(
                "",
                "has both \"command\" and \"url\" fields; a server is one or the other".into(),
            ))
        }
        (Some(http), _, _) => http,
        (None, _, true) => true,
        (None, _, false) => false,
    };
    let transport = if http {
        let url = raw
            .url
            .ok_or_else(|| invalid("url", "is required for an HTTP server".into()))?;
        let mut headers = BTreeMap::new();
        for (key, value) in raw.headers.unwrap_or_default() {
            let value = resolve.text(&format!("{path}.headers.{key}"), &value)?;
            headers.insert(key, value);
        }
        Transport::Http {
            url: resolve.text(&format!("{path}.url"), &url)?,
            headers,
        }
    } else {
        let command = raw
            .command
            .ok_or_else(|| invalid("command", "is required for a stdio server".into()))?;
        let mut args = Vec::new();
        for (i, arg) in raw.args.unwrap_or_default().iter().enumerate() {
            args.push(resolve.text(&format!("{path}.args[{i}]"), arg)?);
        }
        let mut env = BTreeMap::new();
        for (key, value) in raw.env.unwrap_or_default() {
            let value = match value {
                EnvValue::Text(text) => resolve.text(&format!("{path}.env.{key}"), &text)?,
                EnvValue::Number(number) => number.to_string(),
                EnvValue::Unset(()) => continue,
            };
            env.insert(key, value);
        }
        let cwd = match raw.cwd {
            Some(cwd) => Some(resolve.text(&format!("{path}.cwd"), &cwd)?),
            None => None,
        };
        Transport::Stdio {
            command: resolve.text(&format!("{path}.command"), &command)?,
            args,
            env,
            cwd,
        }
    };
    let (replicas, node_tags) = raw
        .mcpfleet
        .map_or((None, None), |ext| (ext.replicas, ext.node_tags));
    Ok(Entry {
        transport,
        replicas,
        node_tags,
    })
}

struct Resolver<'a> {
    inputs: &'a BTreeMap<String, String>,
    variables: &'a Variables<'a>,
}

impl Resolver<'_> {
    /// `text` with each `${...}` replaced by its value.
    fn text(&self, path: &str, text: &str) -> Result<String, McpServersError> {
        let invalid = |reason: String| McpServersError::Invalid {
            path: path.to_string(),
            reason,
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start + 2..].find('}') else {
                return Err(invalid(format!("an unclosed \"${{\" in {text:?}")));
            };
            let name = &rest[start + 2..start + 2 + len];
            out.push_str(&self.variable(name).map_err(invalid)?);
            rest = &rest[start + 3 + len..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn variable(&self, name: &str) -> Result<String, String> {
        let env = |var: &str| (self.variables.env)(var);
        if let Some(id) = name.strip_prefix("input:") {
            return self.inputs.get(id).cloned().ok_or_else(|| {
                format!("uses the input {id:?}, which has no default: give --input {id}=VALUE")
            });
        }
        if let Some(var) = name.strip_prefix("env:") {
            return env(var)
                .ok_or_else(|| format!("uses ${{env:{var}}}, which is not set in this shell"));
        }
        match name {
            "userHome" => {
                return env("HOME").ok_or_else(|| "uses ${userHome}, and HOME is not set".into())
            }
            "workspaceFolder" => {
                return self
                    .variables
                    .workspace
                    .clone()
                    .ok_or_else(|| "uses ${workspaceFolder}, which is not known here".to_string())
            }
            _ => {}
        }
        let (var, default) = match name.split_once(":-") {
            Some((var, default)) => (var, Some(default)),
            None => (name, None),
        };
        let plain = !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !plain {
            return Err(format!("uses ${{{name}}}, which mcpfleet does not know"));
        }
        env(var)
            .or(default.map(str::to_string))
            .ok_or_else(|| format!("uses ${{{var}}}, which is not set in this shell"))
    }
}

impl Entry {
    /// The server this entry describes, with the fleet's defaults where it says nothing.
    pub fn spec(&self, name: &str) -> ServerSpec {
        let mut spec = ServerSpec::stdio(name, "", &[]);
        spec.transport = self.transport.clone();
        if let Some(replicas) = self.replicas {
            spec.replicas = replicas;
        }
        if let Some(tags) = &self.node_tags {
            let mut tags = tags.clone();
            tags.sort();
            tags.dedup();
            spec.node_tags = tags;
        }
        spec
    }

    /// `current` with what this entry says applied: its transport, and the replicas
    /// and tags if given. Settings the file cannot express are kept.
    pub fn merged_into(&self, current: &ServerSpec) -> ServerSpec {
        let mut spec = current.clone();
        let ours = self.spec(&current.name);
        spec.transport = ours.transport;
        if self.replicas.is_some() {
            spec.replicas = ours.replicas;
        }
        if self.node_tags.is_some() {
            spec.node_tags = ours.node_tags;
        }
        spec
    }
}

/// The servers as an `mcpServers` file, in name order: stdio entries as Claude
/// Desktop writes them, HTTP ones with `"type": "http"` as Claude Code does.
pub fn render<'a>(specs: impl IntoIterator<Item = &'a ServerSpec>) -> Value {
    let defaults = ServerSpec::stdio("x", "", &[]);
    let mut servers = Map::new();
    for spec in specs {
        let mut entry = match &spec.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut entry = Map::new();
                entry.insert("command".into(), json!(command));
                entry.insert("args".into(), json!(args));
                if !env.is_empty() {
                    entry.insert("env".into(), json!(env));
                }
                if let Some(cwd) = cwd {
                    entry.insert("cwd".into(), json!(cwd));
                }
                entry
            }
            Transport::Http { url, headers } => {
                let mut entry = Map::new();
                entry.insert("type".into(), json!("http"));
                entry.insert("url".into(), json!(url));
                if !headers.is_empty() {
                    entry.insert("headers".into(), json!(headers));
                }
                entry
            }
        };
        let mut extension = Map::new();
        if spec.replicas != defaults.replicas {
            extension.insert("replicas".into(), json!(spec.replicas));
        }
        if !spec.node_tags.is_empty() {
            extension.insert("nodeTags".into(), json!(spec.node_tags));
        }
        if !extension.is_empty() {
            entry.insert("mcpfleet".into(), Value::Object(extension));
        }
        servers.insert(spec.name.clone(), Value::Object(entry));
    }
    json!({ "mcpServers": servers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Parsed, McpServersError> {
        let inputs = BTreeMap::from([("token".to_string(), "s3cret".to_string())]);
        let env = |name: &str| (name == "HOME").then(|| "/home/me".to_string());
        parse(
            text,
            &Variables {
                inputs: &inputs,
                env: &env,
                workspace: Some("/work/project".into()),
            },
        )
    }

    fn stdio(spec: &Entry) -> (&str, &[String], &BTreeMap<String, String>) {
        match &spec.transport {
            Transport::Stdio {
                command, args, env, ..
            } => (command, args, env),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_dialect_reads_to_the_same_servers() {
        let desktop = r#"{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"],
            "env": {"TZ": "UTC"}}}, "globalShortcut": "x"}"#;
        let code = r#"{"mcpServers": {"time": {"type": "stdio", "command": "uvx",
            "args": ["mcp-server-time"], "env": {"TZ": "UTC"}}}}"#;
        let vscode = r#"{"servers": {"time": {"type": "stdio", "command": "uvx",
            "args": ["mcp-server-time"], "env": {"TZ": "UTC"}}}, "inputs": []}"#;
        let settings = r#"{"editor.fontSize": 12, "mcp": {"servers": {"time": {"command": "uvx",
            "args": ["mcp-server-time"], "env": {"TZ": "UTC"}}}}}"#;
        let first = read(desktop).unwrap().servers;
        for text in [code, vscode, settings] {
            assert_eq!(read(text).unwrap().servers, first, "{text}");
        }
        let (command, args, env) = stdio(&first["time"]);
        assert_eq!((command, args.len(), env["TZ"].as_str()), ("uvx", 1, "UTC"));
    }

    #[test]
    fn http_entries_come_with_or_without_a_type() {
        let text = r#"{"mcpServers": {
            "a": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}},
            "b": {"type": "http", "url": "http://127.0.0.1:9/mcp"}}}"#;
        let servers = read(text).unwrap().servers;
        for name in ["a", "b"] {
            assert!(matches!(servers[name].transport, Transport::Http { .. }));
        }
    }

    #[test]
    fn variables_resolve_from_inputs_and_the_environment() {
        let text = r#"{"servers": {"gh": {"command": "${userHome}/bin/gh-mcp",
            "args": ["--dir", "${workspaceFolder}", "${MISSING:-fallback}"],
            "env": {"TOKEN": "${input:token}", "LEVEL": "${input:level}", "N": 3, "GONE": null}}},
            "inputs": [{"type": "promptString", "id": "token", "password": true},
                       {"type": "pickString", "id": "level", "options": ["a"], "default": "a"}]}"#;
        let servers = read(text).unwrap().servers;
        let (command, args, env) = stdio(&servers["gh"]);
        assert_eq!(command, "/home/me/bin/gh-mcp");
        assert_eq!(args, ["--dir", "/work/project", "fallback"]);
        assert_eq!(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["LEVEL=a", "N=3", "TOKEN=s3cret"]
        );
    }

    #[test]
    fn a_missing_input_names_the_field_and_the_flag() {
        let text = r#"{"servers": {"gh": {"command": "x", "env": {"K": "${input:other}"}}}}"#;
        let error = read(text).unwrap_err().to_string();
        assert!(error.starts_with("servers.gh.env.K: "), "{error}");
        assert!(error.contains("--input other=VALUE"), "{error}");
    }

    #[test]
    fn malformed_files_name_the_line_and_the_field() {
        let cases: [(&str, &str); 6] = [
            (
                "{\"mcpServers\": {\n  \"time\": {\n    \"args\": \"mcp-server-time\"}}}",
                "line 3 column 29: mcpServers.time.args: invalid type: string",
            ),
            (
                "{\"mcpServers\": {\n  \"bad name\": {\"command\": \"x\"}}}",
                "line 2 column 12: mcpServers.bad name: invalid server name",
            ),
            (
                "{\"mcpServers\": {\n  \"a\": {\"command\": \"x\",}}}",
                "line 2 column 24: mcpServers.a: trailing comma",
            ),
            (
                "{\"mcpServers\": {}} x",
                "line 1 column 20: the file: trailing characters",
            ),
            (
                "{\"mcpServers\": {\"a\": {\"mcpfleet\": {\"replica\": 2}, \"command\": \"x\"}}}",
                "mcpServers.a.mcpfleet.replica: unknown field `replica`",
            ),
            (
                "{\"mcpServers\": {\"a\": {\"command\": \"x\", \"env\": {\"K\": [1]}}}}",
                "mcpServers.a.env.K: data did not match any variant",
            ),
        ];
        for (text, expected) in cases {
            let error = read(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn entries_that_cannot_be_run_are_refused() {
        let cases = [
            (
                r#"{"mcpServers": {"a": {"type": "sse", "url": "http://h/sse"}}}"#,
                "mcpServers.a.type: \"sse\"",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "url": "http://h"}}}"#,
                "mcpServers.a: has both",
            ),
            (
                r#"{"mcpServers": {"a": {"args": ["x"]}}}"#,
                "mcpServers.a.command: is required",
            ),
            (
                r#"{"mcpServers": {"a": {"type": "http"}}}"#,
                "mcpServers.a.url: is required",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "envFile": ".env"}}}"#,
                "mcpServers.a.envFile",
            ),
            (
                r#"{"mcpServers": {"a": {"command": ""}}}"#,
                "mcpServers.a: invalid spec",
            ),
            (r#"{"servers": {}, "mcpServers": {}}"#, "both"),
            (r#"{"other": 1}"#, "no \"mcpServers\""),
            (
                r#"{"mcpServers": {"a": {"command": "${nope:x}"}}}"#,
                "does not know",
            ),
        ];
        for (text, expected) in cases {
            let error = read(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn ignored_fields_and_disabled_servers_are_reported() {
        let text = r#"{"mcpServers": {"a": {"command": "x", "autoApprove": []},
            "b": {"command": "y", "disabled": true}}}"#;
        let parsed = read(text).unwrap();
        assert_eq!(parsed.servers.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            parsed.ignored,
            ["mcpServers.a.autoApprove", "mcpServers.b (disabled)"]
        );
    }

    #[test]
    fn a_rendered_file_reads_back_to_the_same_specs() {
        let mut web = ServerSpec::stdio("web", "", &[]);
        web.transport = Transport::Http {
            url: "http://127.0.0.1:9/mcp".into(),
            headers: BTreeMap::from([("X-Key".into(), "k".into())]),
        };
        web.replicas = 3;
        web.node_tags = vec!["gpu".into()];
        let mut time = ServerSpec::stdio("time", "uvx", &["mcp-server-time"]);
        if let Transport::Stdio { env, cwd, .. } = &mut time.transport {
            env.insert("TZ".into(), "UTC".into());
            *cwd = Some("/tmp".into());
        }
        let text = serde_json::to_string_pretty(&render([&time, &web])).unwrap();
        let parsed = read(&text).unwrap();
        let specs: Vec<ServerSpec> = parsed
            .servers
            .iter()
            .map(|(name, entry)| entry.spec(name))
            .collect();
        assert_eq!(specs, [time, web]);
    }
}
