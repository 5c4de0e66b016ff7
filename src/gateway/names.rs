//! How the fleet names a server's tools: `server` + separator + `tool`, within
//! `[A-Za-z0-9_-]{1,64}` because common clients enforce it.
//!
//! - Every other character becomes `_`.
//! - A name still longer than 64 keeps its first 55 characters and ends in `-`
//!   followed by 8 hex digits of the FNV-1a hash of `server` + "\0" + `tool`. So a
//!   shortened name is the same on every node and in every release.
//! - The separator itself may only use the allowed characters (checked at start-up).

/// Longest name common clients accept.
pub const MAX_NAME_LEN: usize = 64;
pub use crate::config::DEFAULT_TOOL_SEPARATOR as DEFAULT_SEPARATOR;
/// Hex digits of the hash a shortened name ends in.
const HASH_DIGITS: usize = 8;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether `separator` can join names (1..=8 allowed characters).
pub fn valid_separator(separator: &str) -> bool {
    !separator.is_empty() && separator.len() <= 8 && separator.chars().all(allowed)
}

/// The name the fleet shows for `tool` of `server`.
pub fn exposed(server: &str, tool: &str, separator: &str) -> String {
    let joined: String = format!("{server}{separator}{tool}")
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    if joined.len() <= MAX_NAME_LEN && !joined.is_empty() {
        return joined;
    }
    let keep = MAX_NAME_LEN - HASH_DIGITS - 1;
    let hash = fnv1a(format!("{server}\0{tool}").as_bytes());
    format!(
        "{}-{:0width$x}",
        &joined[..keep.min(joined.len())],
        hash & 0xffff_ffff,
        width = HASH_DIGITS
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_joined_cleaned_and_shortened_deterministically() {
        let cases: &[(&str, &str, &str)] = &[
            ("everything", "echo", "everything__echo"),
            ("time", "get.current time", "time__get_current_time"),
            (
                "a-very-long-server-name-for-testing",
                "and-an-equally-long-tool-name-here",
                "a-very-long-server-name-for-testing__and-an-equally-lon-b995a067",
            ),
        ];
        for (server, tool, expected) in cases {
            let name = exposed(server, tool, DEFAULT_SEPARATOR);
            assert_eq!(&name, expected, "{server}/{tool}");
            assert!(name.len() <= MAX_NAME_LEN);
            assert!(name.chars().all(allowed));
        }
        // Two long names that share their first 55 characters stay apart.
        let long = "x".repeat(70);
        assert_ne!(
            exposed("s", &format!("{long}1"), "__"),
            exposed("s", &format!("{long}2"), "__")
        );
        assert!(valid_separator("__") && valid_separator("-"));
        assert!(!valid_separator("") && !valid_separator(".") && !valid_separator("/"));
    }
}
