//! `mcpfleet.toml`: a key for every `serve` flag, named as the flag (`listen`,
//! `heartbeat-interval-ms`, `tag = ["a", "b"]` for a flag given more than once), and an
//! `MCPFLEET_*` environment variable for every flag (`MCPFLEET_HEARTBEAT_INTERVAL_MS`).
//! The precedence is flag > environment > file > default.
//!
//! The file's values become the defaults of `serve`'s arguments before the command
//! line is parsed, so clap applies the precedence itself, and every value passes the
//! same parser as the flag. Each value is checked here first, so that an error names
//! the key, its line and the reason, rather than a flag that was never typed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::OsStr;
use clap::{ArgAction, Command};

/// The environment variable that names the config file, as `--config` does.
pub const CONFIG_ENV: &str = "MCPFLEET_CONFIG";
/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Flags of `serve` that have no key: the file itself.
const NOT_IN_FILE: &[&str] = &["config"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path}:{line}: {key}: {reason}")]
    Key {
        path: String,
        line: usize,
        key: String,
        reason: String,
    },
}

/// The environment variable of the flag `--long`.
pub fn env_name(long: &str) -> String {
    format!("MCPFLEET_{}", long.to_uppercase().replace('-', "_"))
}

/// Gives every flag of `serve` its environment variable.
/// A flag given more than once takes a comma-separated list in its variable
/// (`MCPFLEET_TAG=gpu,eu`), and on the command line.
pub fn with_env(serve: Command) -> Command {
    let ids: Vec<(String, String)> = serve
        .get_arguments()
        .filter_map(|arg| Some((arg.get_id().to_string(), arg.get_long()?.to_string())))
        .collect();
    ids.into_iter().fold(serve, |serve, (id, long)| {
        serve.mut_arg(id, |arg| {
            let arg = match arg.get_action() {
                ArgAction::Append => arg.value_delimiter(','),
                _ => arg,
            };
            match arg.get_env() {
                Some(_) => arg,
                None => arg.env(OsStr::from(env_name(&long))),
            }
        })
    })
}

/// The config file the command line or the environment names, if the command is
/// `serve`.
pub fn named_config(args: &[OsString]) -> Option<PathBuf> {
    // The command is the first word that is neither a flag nor a global flag's value.
    let mut words = args.iter().enumerate().skip(1);
    let serve = loop {
        let (i, word) = words.next()?;
        match word.to_str() {
            Some("--endpoint" | "-o" | "--output") => {
                words.next();
            }
            Some(flag) if flag.starts_with('-') => {}
            Some("serve") => break i,
            _ => return None,
        }
    };
    let rest = &args[serve + 1..];
    for (i, arg) in rest.iter().enumerate() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return rest.get(i + 1).map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

/// Reads the file at `path` and checks every key and value against `serve`'s flags.
/// Gives each flag's values, keyed by the flag's id, or every error found.
pub fn read(
    path: &Path,
    serve: &Command,
) -> Result<BTreeMap<String, Vec<String>>, Vec<ConfigFileError>> {
    let shown = path.display().to_string();
    let read_error = |reason: String| {
        vec![ConfigFileError::Read {
            path: shown.clone(),
            reason,
        }]
    };
    let metadata = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(read_error(format!(
            "{} bytes, over the {MAX_CONFIG_BYTES}-byte cap",
            metadata.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
    parse(&shown, &text, serve)
}

/// As `read`, from the file's text.
pub fn parse(
    path: &str,
    text: &str,
    serve: &Command,
) -> Result<BTreeMap<String, Vec<String>>, Vec<ConfigFileError>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    type Table = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    let table: Table = toml::from_str(text).map_err(|e| {
        vec![ConfigFileError::Syntax {
            path: path.to_string(),
            line: e.span().map_or(1, |span| line_of(span.start)),
            reason: e.message().to_string(),
        }]
    })?;
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, value) in &table {
        let line = line_of(key.span().start);
        let error = |reason: String| ConfigFileError::Key {
            path: path.to_string(),
            line,
            key: key.get_ref().clone(),
            reason,
        };
        let arg = serve
            .get_arguments()
            .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
            .find(|arg| arg.get_long() == Some(key.get_ref().as_str()));
        let Some(arg) = arg else {
            errors.push(error(unknown_key(key.get_ref(), serve)));
            continue;
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value.get_ref() {
                toml::Value::Boolean(on) => {
                    values.insert(arg.get_id().to_string(), vec![on.to_string()]);
                }
                _ => errors.push(error("takes true or false".into())),
            }
            continue;
        }
        let repeated = matches!(arg.get_action(), ArgAction::Append);
        let items: Vec<&toml::Value> = match value.get_ref() {
            toml::Value::Array(items) if repeated => items.iter().collect(),
            toml::Value::Array(_) => {
                errors.push(error("takes one value, not a list".into()));
                continue;
            }
            single => vec![single],
        };
        let mut texts = Vec::new();
        for item in items {
            let text = match item {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    errors.push(error(format!("a {} is not a value here", other.type_str())));
                    continue;
                }
            };
            // The flag's own parser decides, as it would for the flag.
            if let Err(e) = parses(arg, &text) {
                let text = paragraph(&e.to_string());
                // Without the kind's own sentence, which says less than the rest.
                let text = match e.kind().as_str() {
                    Some(kind) => text.strip_prefix(&format!("{kind}: ")).unwrap_or(&text),
                    None => &text,
                };
                errors.push(error(text.to_string()));
                continue;
            }
            texts.push(text);
        }
        values.insert(arg.get_id().to_string(), texts);
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        errors.sort_by_key(|e| match e {
            ConfigFileError::Key { line, .. } | ConfigFileError::Syntax { line, .. } => *line,
            ConfigFileError::Read { .. } => 0,
        });
        Err(errors)
    }
}

/// Whether `text` is a value of `arg`, parsed as clap parses the flag.
fn parses(arg: &clap::Arg, text: &str) -> Result<(), clap::Error> {
    let long = arg.get_long().unwrap_or_default().to_string();
    let alone = arg
        .clone()
        .conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)
        .required(false)
        .default_values(Vec::<OsStr>::new());
    Command::new("value")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--{long}"), text.to_string()])
        .map(|_| ())
}

fn unknown_key(key: &str, serve: &Command) -> String {
    let close = serve
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !NOT_IN_FILE.contains(long))
        .find(|long| long.replace('-', "_") == key.replace('-', "_"));
    match close {
        Some(long) => format!("not a key: did you mean {long:?}?"),
        None => "not a key (the keys are the flags of `mcpfleet serve --help`)".into(),
    }
}

/// `mcpfleet config check FILE`: the file as `serve --config FILE` reads it (without
/// the environment), down to the checks made across flags. Gives every error found.
pub fn check(path: &Path) -> Result<(), Vec<String>> {
    use clap::{CommandFactory, FromArgMatches};
    let serve = crate::cli::Cli::command()
        .find_subcommand("serve")
        .expect("serve is a command")
        .clone();
    let values = read(path, &serve)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let shown = path.display();
    let matches = with_defaults(serve, &values)
        .try_get_matches_from(["serve"])
        .map_err(|e| vec![format!("{shown}: {}", first_line(&e.to_string()))])?;
    let args = super::serve::ServeArgs::from_arg_matches(&matches)
        .map_err(|e| vec![format!("{shown}: {}", first_line(&e.to_string()))])?;
    args.to_config()
        .map(|_| ())
        .map_err(|e| vec![format!("{shown}: {e}")])
}

/// The first paragraph of a clap error, on one line (without the usage after it).
fn paragraph(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
}

/// The reference table of every key, generated from `serve`'s flags: key, variable,
/// default and what it does. docs/configuration.md holds it, and a test keeps the two
/// the same.
pub fn reference() -> String {
    use clap::CommandFactory;
    let command = crate::cli::Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("serve is a command");
    let mut table =
        String::from("| key | variable | default | what it sets |\n|---|---|---|---|\n");
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_global_set() || NOT_IN_FILE.contains(&arg.get_id().as_str()) {
            continue;
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = match defaults.as_slice() {
            [] if matches!(arg.get_action(), ArgAction::SetTrue) => "`false`".to_string(),
            [] => "(none)".to_string(),
            values => format!("`{}`", values.join(",")),
        };
        let repeated = matches!(arg.get_action(), ArgAction::Append);
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default();
        let key = if repeated {
            format!("`{long}` (a list)")
        } else {
            format!("`{long}`")
        };
        let variable = match arg.get_env() {
            Some(env) => env.to_string_lossy().into_owned(),
            None => env_name(long),
        };
        table.push_str(&format!("| {key} | `{variable}` | {default} | {help} |\n"));
    }
    table
}

/// `serve` with the file's values as its defaults.
pub fn with_defaults(serve: Command, values: &BTreeMap<String, Vec<String>>) -> Command {
    values.iter().fold(serve, |serve, (id, texts)| {
        let texts: Vec<OsStr> = texts.iter().map(|t| OsStr::from(t.clone())).collect();
        serve.mut_arg(id, |arg| arg.default_values(texts))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve() -> Command {
        crate::cli::Cli::command()
            .find_subcommand("serve")
            .expect("serve")
            .clone()
    }

    #[test]
    fn keys_are_flags_and_values_pass_the_flags_parsers() {
        let text = "listen = \"127.0.0.1:7701\"\nheartbeat-interval-ms = 100\ntag = [\"gpu\", \"eu\"]\nlog-format = \"json\"\n";
        let values = parse("f.toml", text, &serve()).unwrap();
        assert_eq!(values["listen"], ["127.0.0.1:7701"]);
        assert_eq!(values["heartbeat_interval_ms"], ["100"]);
        assert_eq!(values["tags"], ["gpu", "eu"]);
        assert_eq!(values["log_format"], ["json"]);
    }

    #[test]
    fn every_error_names_its_line_key_and_reason() {
        let text = "listen = \"127.0.0.1:7701\"\nheartbeat_interval_ms = 100\nlease-ms = \"soon\"\ntag = 3\nlisten-addr = 1\nlog-format = \"xml\"\nid = [1, 2]\n";
        let errors: Vec<String> = parse("f.toml", text, &serve())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected = [
            "f.toml:2: heartbeat_interval_ms: not a key: did you mean \"heartbeat-interval-ms\"?",
            "f.toml:3: lease-ms: invalid value",
            "f.toml:5: listen-addr: not a key (the keys",
            "f.toml:6: log-format: invalid value",
            "f.toml:7: id: takes one value, not a list",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error} / {expected}");
        }
        let flag = parse("f.toml", "insecure = \"yes\"\n", &serve()).unwrap_err();
        assert_eq!(
            flag[0].to_string(),
            "f.toml:1: insecure: takes true or false"
        );
        let on = parse("f.toml", "insecure = true\n", &serve()).unwrap();
        assert_eq!(on["insecure"], ["true"]);
        let syntax = parse("f.toml", "listen = \n", &serve()).unwrap_err();
        assert!(
            matches!(&syntax[0], ConfigFileError::Syntax { line: 1, .. }),
            "{syntax:?}"
        );
    }

    /// docs/configuration.md holds the reference as `reference()` makes it. With
    /// MCPFLEET_WRITE_DOCS=1 the test writes it there instead.
    #[test]
    fn the_configuration_reference_is_the_flags() {
        const BEGIN: &str = "<!-- generated from `mcpfleet serve`'s flags: do not edit -->\n";
        const END: &str = "<!-- end of generated reference -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md");
        let start = doc.find(BEGIN).expect("the begin marker") + BEGIN.len();
        let end = doc.find(END).expect("the end marker");
        let generated = reference();
        if std::env::var_os("MCPFLEET_WRITE_DOCS").is_some() {
            let updated = format!("{}{generated}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("write the docs");
            return;
        }
        assert_eq!(
            &doc[start..end],
            generated,
            "docs/configuration.md is not the flags' reference: run \
             MCPFLEET_WRITE_DOCS=1 cargo test --lib the_configuration_reference_is_the_flags"
        );
    }

    #[test]
    fn the_config_flag_is_found_on_the_serve_line() {
        let args = |line: &str| -> Vec<OsString> { line.split(' ').map(OsString::from).collect() };
        assert_eq!(
            named_config(&args("mcpfleet serve --id 2 --config /etc/m.toml")),
            Some(PathBuf::from("/etc/m.toml"))
        );
        assert_eq!(
            named_config(&args("mcpfleet -o json serve --config=/etc/m.toml")),
            Some(PathBuf::from("/etc/m.toml"))
        );
        assert_eq!(
            named_config(&args("mcpfleet server add serve --config x")),
            None
        );
    }
}
