//! Pages of a list answer (ListServers, FleetStatus): in name order, bounded both in
//! servers and in bytes, so that no answer outgrows a client's message limit however
//! many servers the registry holds. A page's token is the last name it holds.

use std::collections::BTreeMap;
use std::ops::Bound;

use tonic::Status;

use crate::registry::validate::validate_name;

/// Servers per page when the request names no size.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// The most servers a page holds, whatever the request asks.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// The most bytes of items a page holds (one item always fits: a server's record is
/// far below this).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// One page of items and the token of the next page (empty on the last).
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: String,
}

/// The page of `map` that follows `token` (from the start if it is empty), with at
/// most `size` items (0 for the default), each made by `convert`.
pub fn page<V, T: prost::Message>(
    map: &BTreeMap<String, V>,
    token: &str,
    size: u32,
    mut convert: impl FnMut(&V) -> T,
) -> Result<Page<T>, Status> {
    let start = if token.is_empty() {
        Bound::Unbounded
    } else {
        validate_name(token).map_err(|e| {
            Status::invalid_argument(format!("page_token is not one this node gave out: {e}"))
        })?;
        Bound::Excluded(token.to_string())
    };
    let size = match size {
        0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    } as usize;
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut rest = map.range::<String, _>((start, Bound::Unbounded)).peekable();
    let mut last = None;
    while let Some((name, value)) = rest.peek() {
        if items.len() == size {
            break;
        }
        let item = convert(value);
        let len = item.encoded_len();
        if !items.is_empty() && bytes + len > MAX_PAGE_BYTES {
            break;
        }
        bytes += len;
        items.push(item);
        last = Some(name.to_string());
        rest.next();
    }
    let next_token = match (rest.peek(), last) {
        (Some(_), Some(last)) => last,
        _ => String::new(),
    };
    Ok(Page { items, next_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> BTreeMap<String, String> {
        (0..count)
            .map(|i| (format!("s-{i:05}"), "x".repeat(i % 7)))
            .collect()
    }

    fn all_pages(map: &BTreeMap<String, String>, size: u32) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = page(map, &token, size, |v| v.clone()).unwrap();
            pages.push(page.items);
            if page.next_token.is_empty() {
                return pages;
            }
            token = page.next_token;
        }
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let map = names(2_345);
        let pages = all_pages(&map, 0);
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [500, 500, 500, 500, 345]
        );
        let seen: Vec<String> = pages.into_iter().flatten().collect();
        assert_eq!(seen, map.values().cloned().collect::<Vec<_>>());
        // Asking for more than the cap gets the cap; an exact multiple ends cleanly.
        assert_eq!(all_pages(&names(2_000), 5_000).len(), 2);
        assert_eq!(all_pages(&BTreeMap::new(), 0), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_page_stops_at_its_byte_cap() {
        let big: BTreeMap<String, String> = (0..5)
            .map(|i| (format!("big-{i}"), "x".repeat(MAX_PAGE_BYTES / 2)))
            .collect();
        let pages = all_pages(&big, 0);
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1, 1, 1, 1]
        );
    }

    #[test]
    fn a_malformed_token_is_refused() {
        let error = page(&names(3), "Not A Name!", 0, |v| v.clone())
            .err()
            .unwrap();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
}
