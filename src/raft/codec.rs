//! One encoding (bincode 2, serde) for log entries, snapshots and the internal wire.
//!
//! Every value this build encodes starts with a tag: two marker bytes and the format
//! version (`format::FORMAT_VERSION`, big-endian u16). bincode is positional, so bytes
//! of another layout would decode into garbage or fail far from the cause; the tag makes
//! a value of another version, or one that is not mcpfleet's, fail at once with an error
//! that names its version. So each log entry on disk, each snapshot and each message
//! between nodes says which format it is in.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::format::FORMAT_VERSION;

/// Largest value decoded in one piece (a snapshot, a batch of entries), in bytes.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;
/// The first bytes of every value. Every value of ours begins with an integer, an enum
/// tag, an option or a bool, and in bincode's standard encoding none of those starts
/// with 0xFF: so the untagged bytes of format version 2 are told apart from tagged ones.
const MARK: [u8; 2] = [0xFF, b'F'];
/// The tag: the mark and the version.
pub const TAG_BYTES: usize = MARK.len() + 2;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error(
        "the value carries no format tag: written by an mcpfleet older than format \
         version 3, or not by mcpfleet"
    )]
    Untagged,
    #[error(
        "the value was written in format version {found}, and this mcpfleet reads only \
         version {FORMAT_VERSION}"
    )]
    Version { found: u32 },
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&MARK);
    bytes.extend_from_slice(&(FORMAT_VERSION as u16).to_be_bytes());
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// How many bytes `encode` makes of `value`, without making them.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(TAG_BYTES + size.bytes_written)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let body = untag(bytes)?;
    let config = bincode::config::standard().with_limit::<MAX_DECODE_BYTES>();
    let (value, read) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            body.len() - read
        )));
    }
    Ok(value)
}

/// The value's bytes after its tag, if the tag is this build's.
fn untag(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < TAG_BYTES || bytes[..MARK.len()] != MARK {
        return Err(CodecError::Untagged);
    }
    let found = u32::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if found != FORMAT_VERSION {
        return Err(CodecError::Version { found });
    }
    Ok(&bytes[TAG_BYTES..])
}

const _: () = assert!(FORMAT_VERSION <= u16::MAX as u32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Batch, Proposal, RequestId};
    use crate::registry::Command;

    fn batch() -> Batch {
        Batch {
            stamp_ms: 1_700_000_000_000,
            proposals: vec![Proposal {
                id: RequestId {
                    node: 1,
                    boot: 7,
                    seq: 3,
                },
                floor: 3,
                command: Command::DeleteSession { id: "s".into() },
                actor: Some("token 0123456789abcdef (admin)".into()),
            }],
        }
    }

    #[test]
    fn values_round_trip_with_their_tag() {
        let bytes = encode(&batch()).unwrap();
        assert_eq!(&bytes[..2], &MARK);
        assert_eq!(encoded_len(&batch()), Ok(bytes.len()));
        assert_eq!(decode::<Batch>(&bytes), Ok(batch()));
    }

    #[test]
    fn a_value_of_another_version_or_none_is_refused_not_misread() {
        let tagged = encode(&batch()).unwrap();
        // The same bytes said to be of the next version.
        let mut newer = tagged.clone();
        newer[2..4].copy_from_slice(&((FORMAT_VERSION + 1) as u16).to_be_bytes());
        let refused = decode::<Batch>(&newer).unwrap_err();
        assert_eq!(
            refused,
            CodecError::Version {
                found: FORMAT_VERSION + 1
            }
        );
        assert!(refused
            .to_string()
            .contains(&format!("format version {}", FORMAT_VERSION + 1)));
        // Version 2 wrote bincode with no tag.
        let untagged = bincode::serde::encode_to_vec(batch(), bincode::config::standard()).unwrap();
        assert_eq!(decode::<Batch>(&untagged), Err(CodecError::Untagged));
        assert_eq!(decode::<Batch>(&[]), Err(CodecError::Untagged));
        // A tag with trailing garbage, and a truncated value.
        let mut longer = tagged.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Batch>(&longer),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<Batch>(&tagged[..tagged.len() - 1]),
            Err(CodecError::Decode(_))
        ));
    }
}
