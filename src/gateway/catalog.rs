//! The fleet's tool list: every server's catalog from the registry's applied state,
//! under the fleet's names (`names`), ordered by name. A server with no healthy
//! replica drops out and comes back when one recovers; a catalog that cannot be read
//! drops only that server. Rebuilt when the registry's revision moves; a server's
//! parsed list is reused while its catalog text stays the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rmcp::model::Tool;

use super::names;
use crate::control::Reader;

/// Tools on one page of `tools/list`.
pub const PAGE_SIZE: usize = 500;

/// One tool as the fleet offers it.
#[derive(Clone, Debug)]
pub struct Exposed {
    /// The server that offers it.
    pub server: String,
    /// The server's own name for it.
    pub tool: String,
    /// The tool under the fleet's name.
    pub listed: Tool,
}

/// The fleet's tools at one registry revision.
#[derive(Default)]
pub struct Aggregate {
    revision: u64,
    /// Changes exactly when what the list offers may have: a hash of each offered
    /// server's name and catalog text, and of the separator.
    pub fingerprint: u64,
    /// Ordered by the fleet's name.
    pub tools: Vec<Exposed>,
    by_name: BTreeMap<String, usize>,
}

impl Aggregate {
    pub fn find(&self, name: &str) -> Option<&Exposed> {
        self.by_name.get(name).map(|i| &self.tools[*i])
    }
}

/// Per server: the catalog text last parsed, and its tools.
type Parsed = BTreeMap<String, (String, Arc<Vec<Tool>>)>;

pub struct Catalogs {
    separator: String,
    current: Mutex<Arc<Aggregate>>,
    parsed: Mutex<Parsed>,
}

impl Catalogs {
    pub fn new(separator: &str) -> Catalogs {
        Catalogs {
            separator: separator.to_string(),
            current: Mutex::new(Arc::new(Aggregate {
                revision: u64::MAX,
                ..Aggregate::default()
            })),
            parsed: Mutex::new(BTreeMap::new()),
        }
    }

    /// The fleet's tools as this node's applied state has them now.
    pub fn current(&self, reader: &Reader) -> Arc<Aggregate> {
        let (revision, offered) = {
            let state = reader.stale();
            let registry = &state.registry;
            if let Ok(current) = self.current.lock() {
                if current.revision == registry.revision {
                    return current.clone();
                }
            }
            let offered: Vec<(String, String)> = registry
                .catalogs
                .iter()
                .filter(|(server, _)| {
                    !crate::router::candidates(registry, server, 0, |_, _| 0).is_empty()
                })
                .map(|(server, catalog)| (server.clone(), catalog.tools.clone()))
                .collect();
            (registry.revision, offered)
        };
        let mut fingerprint = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.separator, &mut fingerprint);
        std::hash::Hash::hash(&offered, &mut fingerprint);
        let mut aggregate = Aggregate {
            revision,
            fingerprint: std::hash::Hasher::finish(&fingerprint),
            ..Aggregate::default()
        };
        let Ok(mut parsed) = self.parsed.lock() else {
            return Arc::new(aggregate);
        };
        parsed.retain(|server, _| offered.iter().any(|(s, _)| s == server));
        let mut all = Vec::new();
        for (server, text) in offered {
            let tools = match parsed.get(&server) {
                Some((known, tools)) if *known == text => tools.clone(),
                _ => match serde_json::from_str::<Vec<Tool>>(&text) {
                    Ok(tools) => {
                        let tools = Arc::new(tools);
                        parsed.insert(server.clone(), (text, tools.clone()));
                        tools
                    }
                    Err(error) => {
                        tracing::warn!(%server, %error, "unreadable tool catalog: left out");
                        continue;
                    }
                },
            };
            for tool in tools.iter() {
                let name = names::exposed(&server, &tool.name, &self.separator);
                let mut listed = tool.clone();
                listed.name = name.into();
                all.push(Exposed {
                    server: server.clone(),
                    tool: tool.name.to_string(),
                    listed,
                });
            }
        }
        drop(parsed);
        all.sort_by(|a, b| (&a.listed.name, &a.server).cmp(&(&b.listed.name, &b.server)));
        for exposed in all {
            let name = exposed.listed.name.to_string();
            if aggregate.by_name.contains_key(&name) {
                tracing::warn!(%name, server = %exposed.server, tool = %exposed.tool,
                    "two tools share one fleet name: the second is left out");
                continue;
            }
            aggregate.by_name.insert(name, aggregate.tools.len());
            aggregate.tools.push(exposed);
        }
        let aggregate = Arc::new(aggregate);
        if let Ok(mut current) = self.current.lock() {
            *current = aggregate.clone();
        }
        aggregate
    }
}

/// One page of the list: the tools from `cursor` (an offset, as the previous page's
/// `next_cursor` gave it) on, and the next page's cursor.
pub fn page(
    tools: &[Exposed],
    cursor: Option<&str>,
) -> Result<(Vec<Tool>, Option<String>), String> {
    let start = match cursor {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|start| *start <= tools.len())
            .ok_or_else(|| format!("invalid cursor {text:?}"))?,
    };
    let end = (start + PAGE_SIZE).min(tools.len());
    let next = (end < tools.len()).then(|| end.to_string());
    Ok((
        tools[start..end].iter().map(|e| e.listed.clone()).collect(),
        next,
    ))
}
