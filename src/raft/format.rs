//! The format version of a data dir. Log entries and snapshots are bincode, which is
//! positional: bytes written by another layout decode into garbage, or fail far from
//! the cause. So a data dir records the format it was written in when it is first
//! used, and a node refuses, with one clear line, a data dir of any other format
//! before it decodes a single entry.
//!
//! Version 1 is every data dir from before the version was recorded (it has an
//! incarnation but no format record). Version 2 added client sessions: the leader's
//! time stamp on each entry, the floor on each write, and the sessions in snapshots.
//! Version 3 tags every encoded value with its version (`codec`): each log entry,
//! snapshot and message between nodes. Validation moved from `apply` to proposal
//! time, and the table of client sessions is bounded in sessions and outcomes.
//! Version 4 adds the `PutServers` command (several servers in one write), which a
//! version-3 node could not decode.
//! Version 5 adds bearer tokens: the `CreateToken` and `RevokeToken` commands and the
//! registry's table of tokens.
//! Version 6 changes the heartbeat between nodes: it carries a node's running slots in
//! full only when the leader may not hold them, and otherwise only their version.
//!
//! Anything that changes how an entry is encoded or what `apply` decides from it is a
//! new version: nodes of different versions must not apply the same log.

use crate::env::Disk;

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 6;
/// The disk meta key of the format record.
const META_KEY: &str = "format";
/// Written at a data dir's first start, by every version.
const FIRST_START_KEY: &str = "incarnation";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "the data dir was written in format version {found}, and this mcpfleet reads only \
         version {FORMAT_VERSION}: run the mcpfleet that wrote it, or start this node on an \
         empty data dir and add it to the cluster again (`node remove`, then `serve --join`)"
    )]
    Other { found: u32 },
    #[error("the data dir's format record is malformed")]
    Malformed,
    #[error("{0}")]
    Disk(String),
}

/// Checks that the data dir on `disk` is in this build's format, recording the format
/// in a data dir that has never been used.
pub async fn check_or_record(disk: &dyn Disk) -> Result<(), FormatError> {
    let disk_error = |e: crate::env::DiskError| FormatError::Disk(e.to_string());
    match disk.get_meta(META_KEY).map_err(disk_error)? {
        Some(bytes) => {
            let bytes: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| FormatError::Malformed)?;
            match u32::from_be_bytes(bytes) {
                FORMAT_VERSION => Ok(()),
                found => Err(FormatError::Other { found }),
            }
        }
        None if disk
            .get_meta(FIRST_START_KEY)
            .map_err(disk_error)?
            .is_some() =>
        {
            Err(FormatError::Other { found: 1 })
        }
        None => {
            disk.put_meta(META_KEY, FORMAT_VERSION.to_be_bytes().to_vec())
                .await
                .map_err(disk_error)?;
            disk.sync().await.map_err(disk_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MemoryDisk;

    #[tokio::test]
    async fn a_new_data_dir_is_recorded_and_then_accepted() {
        let disk = MemoryDisk::new();
        assert_eq!(check_or_record(&disk).await, Ok(()));
        assert_eq!(
            disk.get_meta(META_KEY).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
        assert_eq!(check_or_record(&disk).await, Ok(()));
    }

    #[tokio::test]
    async fn data_dirs_of_other_formats_are_refused_before_anything_is_read() {
        // A data dir from before format records: it has started, but says no format.
        let old = MemoryDisk::new();
        old.put_meta(FIRST_START_KEY, 7u64.to_be_bytes().to_vec())
            .await
            .unwrap();
        let refused = check_or_record(&old).await.unwrap_err();
        assert_eq!(refused, FormatError::Other { found: 1 });
        assert!(
            refused.to_string().contains("format version 1"),
            "{refused}"
        );
        assert_eq!(old.get_meta(META_KEY).unwrap(), None, "nothing written");
        // A newer one, and a damaged record.
        let newer = MemoryDisk::new();
        newer
            .put_meta(META_KEY, (FORMAT_VERSION + 1).to_be_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(
            check_or_record(&newer).await,
            Err(FormatError::Other {
                found: FORMAT_VERSION + 1
            })
        );
        let damaged = MemoryDisk::new();
        damaged.put_meta(META_KEY, vec![1, 2]).await.unwrap();
        assert_eq!(check_or_record(&damaged).await, Err(FormatError::Malformed));
    }
}
