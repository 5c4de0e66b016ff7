//! What the fleet offers: every server's catalog (tools, prompts, resources) from the
//! registry's applied state, tools and prompts under the fleet's names (`names`),
//! ordered by name; resources keep their URIs and get the fleet's names. A server with
//! no healthy replica drops out and comes back when one recovers; a list that cannot
//! be read drops only that list of that server. Rebuilt when the registry's revision
//! moves; a server's parsed lists are reused while its catalog stays the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{Prompt, Resource, Tool};
use serde::de::DeserializeOwned;

use super::names;
use crate::control::Reader;
use crate::registry::Catalog;

/// Items on one page of a list.
pub const PAGE_SIZE: usize = 500;

/// One tool, prompt or resource as the fleet offers it.
#[derive(Clone, Debug)]
pub struct Exposed<T> {
    /// The server that offers it.
    pub server: String,
    /// The server's own name for it (for a resource, its URI).
    pub own: String,
    /// The item under the fleet's name.
    pub listed: T,
}

/// Per list, a hash of each offering server's name and list, and of the separator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fingerprints {
    pub tools: u64,
    pub prompts: u64,
    pub resources: u64,
}

/// What the fleet offers at one registry revision.
#[derive(Default)]
pub struct Aggregate {
    revision: u64,
    /// Each changes exactly when what its list offers may have.
    pub fingerprints: Fingerprints,
    /// Ordered by the fleet's name.
    pub tools: Vec<Exposed<Tool>>,
    pub prompts: Vec<Exposed<Prompt>>,
    /// Ordered by URI.
    pub resources: Vec<Exposed<Resource>>,
    tools_by_name: BTreeMap<String, usize>,
    prompts_by_name: BTreeMap<String, usize>,
    resources_by_uri: BTreeMap<String, usize>,
}

impl Aggregate {
    pub fn find(&self, name: &str) -> Option<&Exposed<Tool>> {
        self.tools_by_name.get(name).map(|i| &self.tools[*i])
    }

    pub fn find_prompt(&self, name: &str) -> Option<&Exposed<Prompt>> {
        self.prompts_by_name.get(name).map(|i| &self.prompts[*i])
    }

    pub fn find_resource(&self, uri: &str) -> Option<&Exposed<Resource>> {
        self.resources_by_uri.get(uri).map(|i| &self.resources[*i])
    }
}

/// One server's lists, parsed, with the catalog they came from.
struct Parsed {
    catalog: Catalog,
    tools: Arc<Vec<Tool>>,
    prompts: Arc<Vec<Prompt>>,
    resources: Arc<Vec<Resource>>,
}

pub struct Catalogs {
    separator: String,
    current: Mutex<Arc<Aggregate>>,
    parsed: Mutex<BTreeMap<String, Parsed>>,
}

/// `text` as a list of `T`, or nothing (logged) when it cannot be read. An empty text
/// is an empty list (the server offers no such things).
fn parse_list<T: DeserializeOwned>(server: &str, what: &str, text: &str) -> Arc<Vec<T>> {
    if text.is_empty() {
        return Arc::new(Vec::new());
    }
    match serde_json::from_str::<Vec<T>>(text) {
        Ok(items) => Arc::new(items),
        Err(error) => {
            tracing::warn!(%server, what, %error, "unreadable catalog list: left out");
            Arc::new(Vec::new())
        }
    }
}

/// Sorts `all` by key and keeps the first item of each key, logging the others.
fn index<T>(
    mut all: Vec<(String, Exposed<T>)>,
    what: &str,
) -> (Vec<Exposed<T>>, BTreeMap<String, usize>) {
    all.sort_by(|a, b| (&a.0, &a.1.server).cmp(&(&b.0, &b.1.server)));
    let mut items = Vec::with_capacity(all.len());
    let mut by_key = BTreeMap::new();
    for (key, exposed) in all {
        if by_key.contains_key(&key) {
            tracing::warn!(what, %key, server = %exposed.server, own = %exposed.own,
                "two servers offer one fleet name: the second is left out");
            continue;
        }
        by_key.insert(key, items.len());
        items.push(exposed);
    }
    (items, by_key)
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

    /// What the fleet offers as this node's applied state has it now.
    pub fn current(&self, reader: &Reader) -> Arc<Aggregate> {
        let (revision, offered) = {
            let state = reader.stale();
            let registry = &state.registry;
            if let Ok(current) = self.current.lock() {
                if current.revision == registry.revision {
                    return current.clone();
                }
            }
            let offered: Vec<(String, Catalog)> = registry
                .catalogs
                .iter()
                .filter(|(server, _)| {
                    !crate::router::candidates(registry, server, 0, |_, _| 0).is_empty()
                })
                .map(|(server, catalog)| (server.clone(), catalog.clone()))
                .collect();
            (registry.revision, offered)
        };
        self.aggregate(revision, offered)
    }

    /// What `offered` (each server's catalog) makes the fleet offer, at `revision`.
    fn aggregate(&self, revision: u64, offered: Vec<(String, Catalog)>) -> Arc<Aggregate> {
        let fingerprint = |list: fn(&Catalog) -> &String| {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&self.separator, &mut hasher);
            for (server, catalog) in &offered {
                std::hash::Hash::hash(server, &mut hasher);
                std::hash::Hash::hash(list(catalog), &mut hasher);
            }
            std::hash::Hasher::finish(&hasher)
        };
        let fingerprints = Fingerprints {
            tools: fingerprint(|c| &c.tools),
            prompts: fingerprint(|c| &c.prompts),
            resources: fingerprint(|c| &c.resources),
        };
        let mut aggregate = Aggregate {
            revision,
            fingerprints,
            ..Aggregate::default()
        };
        let Ok(mut parsed) = self.parsed.lock() else {
            return Arc::new(aggregate);
        };
        parsed.retain(|server, _| offered.iter().any(|(s, _)| s == server));
        let (mut tools, mut prompts, mut resources) = (Vec::new(), Vec::new(), Vec::new());
        for (server, catalog) in offered {
            let fresh = parsed.get(&server).is_some_and(|p| p.catalog == catalog);
            if !fresh {
                let lists = Parsed {
                    tools: parse_list(&server, "tools", &catalog.tools),
                    prompts: parse_list(&server, "prompts", &catalog.prompts),
                    resources: parse_list(&server, "resources", &catalog.resources),
                    catalog,
                };
                parsed.insert(server.clone(), lists);
            }
            let Some(lists) = parsed.get(&server) else {
                continue;
            };
            for tool in lists.tools.iter() {
                let name = names::exposed(&server, &tool.name, &self.separator);
                let mut listed = tool.clone();
                listed.name = name.clone().into();
                let own = tool.name.to_string();
                tools.push((
                    name,
                    Exposed {
                        server: server.clone(),
                        own,
                        listed,
                    },
                ));
            }
            for prompt in lists.prompts.iter() {
                let name = names::exposed(&server, &prompt.name, &self.separator);
                let mut listed = prompt.clone();
                listed.name = name.clone();
                let own = prompt.name.clone();
                prompts.push((
                    name,
                    Exposed {
                        server: server.clone(),
                        own,
                        listed,
                    },
                ));
            }
            for resource in lists.resources.iter() {
                let mut listed = resource.clone();
                listed.name = names::exposed(&server, &resource.name, &self.separator);
                let own = resource.uri.clone();
                resources.push((
                    own.clone(),
                    Exposed {
                        server: server.clone(),
                        own,
                        listed,
                    },
                ));
            }
        }
        drop(parsed);
        (aggregate.tools, aggregate.tools_by_name) = index(tools, "tool");
        (aggregate.prompts, aggregate.prompts_by_name) = index(prompts, "prompt");
        (aggregate.resources, aggregate.resources_by_uri) = index(resources, "resource");
        let aggregate = Arc::new(aggregate);
        if let Ok(mut current) = self.current.lock() {
            *current = aggregate.clone();
        }
        aggregate
    }
}

/// What servers offering `offered` make the fleet offer, with `separator` between
/// server and tool: the catalog's reading of the lists servers send (fuzzed).
pub fn aggregate_of(offered: &[(String, Catalog)], separator: &str) -> Arc<Aggregate> {
    Catalogs::new(separator).aggregate(0, offered.to_vec())
}

/// One page of a list: the items from `cursor` (an offset, as the previous page's
/// `next_cursor` gave it) on, and the next page's cursor.
pub fn page<T: Clone>(
    items: &[Exposed<T>],
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), String> {
    let start = match cursor {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|start| *start <= items.len())
            .ok_or_else(|| format!("invalid cursor {text:?}"))?,
    };
    let end = (start + PAGE_SIZE).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok((
        items[start..end].iter().map(|e| e.listed.clone()).collect(),
        next,
    ))
}
