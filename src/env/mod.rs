//! The seams between node logic and the outside world: the network, the disk and the
//! seeded runtime, each with a production version. The simulator supplies its own
//! network and disk through the same traits. This is the only module (with main.rs)
//! that may touch real sockets, real files, threads or entropy.

pub mod bugs;
pub mod disk;
pub mod launcher;
pub mod network;
pub mod process_tree;
pub mod runtime;

pub use disk::{Disk, DiskError, MemoryDisk, SledDisk};
pub use network::{Connection, Incoming, Network, NetworkError, TcpNetwork};
pub use runtime::SeededRuntime;

/// A seed drawn from the operating system: the one place entropy enters a production
/// node. Everything inside the node derives from it.
pub fn entropy_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    }
}
