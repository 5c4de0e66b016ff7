//! One encoding (bincode 2, serde) for log entries, snapshots and the internal wire.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest value decoded in one piece (a snapshot, a batch of entries), in bytes.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<MAX_DECODE_BYTES>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}
