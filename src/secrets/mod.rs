//! Secret env values and headers of server specs, sealed with the cluster's secrets
//! key so that the registry, its log, snapshots and backups, and every answer hold
//! only ciphertext.
//!
//! A sealed value is `mcpfleet-sealed:v1:` and the base64url of a 12-byte nonce and
//! the ChaCha20-Poly1305 ciphertext (ring). Its associated data binds it to the server
//! and the variable or header it was sealed for, so it opens nowhere else. The node a
//! client writes through seals the values marked secret (`--secret-env`,
//! `--secret-header`); only a node that launches a replica opens them, to hand them to
//! the process or the HTTP server. Every node of a cluster holds the same key
//! (`serve --secrets-key-file`).
//!
//! Sealing is deterministic (the nonce is an HMAC of the value and its place under a
//! key derived from the cluster's), as node logic must be: the same value sealed for
//! the same place gives the same text, which shows only that two such values are
//! equal. Nonces of different values differ but for a 2^-96 chance.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;

/// How every sealed value begins.
pub const SEALED_PREFIX: &str = "mcpfleet-sealed:v1:";
/// What outputs meant for people show instead of a sealed value.
pub const REDACTED: &str = "<secret>";
/// Bytes of a secrets key.
pub const KEY_BYTES: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("the secrets key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "{place} of {server:?} is secret, and this node has no secrets key \
         (serve --secrets-key-file)"
    )]
    NoKey { server: String, place: String },
    #[error(
        "{place} of {server:?} does not open with this node's secrets key: it was sealed \
         for another server or place, or under another key, or is damaged"
    )]
    Unopenable { server: String, place: String },
}

/// The cluster's secrets key.
pub struct SecretsKey {
    cipher: LessSafeKey,
    nonces: hmac::Key,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// A key from its 32 bytes: the cipher's and the nonces' keys are derived from
    /// them, each under its own label.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> SecretsKey {
        let master = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let derive = |label: &[u8]| hmac::sign(&master, label);
        let cipher = derive(b"mcpfleet secrets: cipher");
        let nonces = derive(b"mcpfleet secrets: nonces");
        SecretsKey {
            cipher: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, cipher.as_ref())
                    .expect("an HMAC-SHA256 is a ChaCha20 key's length"),
            ),
            nonces: hmac::Key::new(hmac::HMAC_SHA256, nonces.as_ref()),
        }
    }

    /// Reads a key file: 32 bytes, or 64 hex digits (with or without a newline).
    /// `mcpfleet secrets new-key` writes one.
    pub fn load(path: &Path) -> Result<SecretsKey, SecretsError> {
        let failed = |reason: String| SecretsError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes);
        let key: [u8; KEY_BYTES] = if bytes.len() == KEY_BYTES {
            bytes.as_slice().try_into().expect("checked length")
        } else {
            let hex = text.trim();
            if hex.len() != KEY_BYTES * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(failed(format!(
                    "holds {} bytes; a key is {KEY_BYTES} bytes, or {} hex digits",
                    bytes.len(),
                    KEY_BYTES * 2
                )));
            }
            let mut key = [0u8; KEY_BYTES];
            for (i, byte) in key.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits");
            }
            key
        };
        Ok(SecretsKey::from_bytes(&key))
    }

    /// Seals `value` for `place` (`env FOO`, `header Authorization`) of `server`.
    pub fn seal(&self, server: &str, place: &str, value: &str) -> String {
        let aad = associated(server, place);
        let tag = hmac::sign(&self.nonces, &[aad.as_bytes(), value.as_bytes()].concat());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        let mut sealed = value.as_bytes().to_vec();
        self.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut sealed,
            )
            .expect("a value within the spec's limits seals");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Opens a sealed value of `place` of `server`.
    pub fn open(&self, server: &str, place: &str, sealed: &str) -> Result<String, SecretsError> {
        let unopenable = || SecretsError::Unopenable {
            server: server.to_string(),
            place: place.to_string(),
        };
        let text = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(unopenable)?;
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| unopenable())?;
        if bytes.len() < NONCE_LEN {
            return Err(unopenable());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unopenable())?;
        let aad = associated(server, place);
        let mut body = body.to_vec();
        let plain = self
            .cipher
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| unopenable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| unopenable())
    }
}

/// What a sealed value is bound to.
fn associated(server: &str, place: &str) -> String {
    format!("mcpfleet/v1\0{server}\0{place}")
}

/// Whether `value` is a sealed value.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// `value` as outputs meant for people show it.
pub fn redacted(value: &str) -> &str {
    if is_sealed(value) {
        REDACTED
    } else {
        value
    }
}

/// The place of an env variable, and of a header, as sealing names it.
pub fn env_place(name: &str) -> String {
    format!("env {name}")
}

pub fn header_place(name: &str) -> String {
    format!("header {name}")
}

/// `values` with each sealed value opened, for launching `server`.
pub fn open_all(
    key: Option<&SecretsKey>,
    server: &str,
    values: &BTreeMap<String, String>,
    place: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, String>, SecretsError> {
    values
        .iter()
        .map(|(name, value)| {
            if !is_sealed(value) {
                return Ok((name.clone(), value.clone()));
            }
            let key = key.ok_or_else(|| SecretsError::NoKey {
                server: server.to_string(),
                place: place(name),
            })?;
            Ok((name.clone(), key.open(server, &place(name), value)?))
        })
        .collect()
}

/// Checks that every sealed value of `values` opens under `key` for its place in
/// `server` (a value copied from another server's spec does not).
pub fn check_sealed(
    key: Option<&SecretsKey>,
    server: &str,
    values: &BTreeMap<String, String>,
    place: impl Fn(&str) -> String,
) -> Result<(), SecretsError> {
    open_all(key, server, values, place).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[byte; KEY_BYTES])
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_server_and_place_under_its_key() {
        let sealed = key(1).seal("github", "env TOKEN", "ghp_secret");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(redacted(&sealed), REDACTED);
        assert_eq!(
            key(1).open("github", "env TOKEN", &sealed).as_deref(),
            Ok("ghp_secret")
        );
        for (k, server, place) in [
            (2, "github", "env TOKEN"),
            (1, "gitlab", "env TOKEN"),
            (1, "github", "env OTHER"),
            (1, "github", "header TOKEN"),
        ] {
            assert!(
                key(k).open(server, place, &sealed).is_err(),
                "{server} {place}"
            );
        }
        // Deterministic, and different values get different texts.
        assert_eq!(sealed, key(1).seal("github", "env TOKEN", "ghp_secret"));
        assert_ne!(sealed, key(1).seal("github", "env TOKEN", "ghp_other"));
    }

    #[test]
    fn damaged_and_foreign_texts_do_not_open() {
        let sealed = key(1).seal("s", "env A", "value");
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        for text in [
            damaged.as_str(),
            "mcpfleet-sealed:v1:",
            "mcpfleet-sealed:v1:!!!",
            "mcpfleet-sealed:v1:AAAA",
            "plain",
        ] {
            assert!(key(1).open("s", "env A", text).is_err(), "{text}");
        }
    }

    #[test]
    fn open_all_opens_sealed_values_and_keeps_others() {
        let k = key(3);
        let values = BTreeMap::from([
            ("A".to_string(), k.seal("s", "env A", "secret")),
            ("B".to_string(), "plain".to_string()),
        ]);
        let opened = open_all(Some(&k), "s", &values, env_place).unwrap();
        assert_eq!(opened["A"], "secret");
        assert_eq!(opened["B"], "plain");
        assert!(matches!(
            open_all(None, "s", &values, env_place),
            Err(SecretsError::NoKey { .. })
        ));
    }

    #[test]
    fn key_files_take_raw_bytes_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [5u8; KEY_BYTES]).unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "05".repeat(KEY_BYTES))).unwrap();
        let sealed = SecretsKey::load(&raw).unwrap().seal("s", "env A", "v");
        assert_eq!(
            SecretsKey::load(&hex)
                .unwrap()
                .open("s", "env A", &sealed)
                .as_deref(),
            Ok("v")
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        assert!(SecretsKey::load(&short).is_err());
        assert!(SecretsKey::load(&dir.path().join("missing")).is_err());
    }
}
