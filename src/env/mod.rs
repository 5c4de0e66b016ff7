//! The seams between node logic and the outside world: the network, the disk and the
//! seeded runtime, each with a production version. The simulator supplies its own
//! network and disk through the same traits. This is the only module (with main.rs)
//! that may touch real sockets, real files, threads or entropy.

pub mod disk;
pub mod network;
pub mod runtime;

use std::sync::Arc;

pub use disk::{Disk, DiskError, MemoryDisk, SledDisk};
pub use network::{Connection, Incoming, Network, NetworkError, TcpNetwork};
pub use runtime::SeededRuntime;

/// Everything a node draws from the outside world.
#[derive(Clone)]
pub struct Environment {
    /// Seeds every random choice the node makes (openraft's election timeouts).
    pub seed: u64,
    pub network: Arc<dyn Network>,
    pub disk: Arc<dyn Disk>,
}

impl Environment {
    /// The production environment: real TCP and the given disk, seeded from the OS.
    pub fn production(disk: Arc<dyn Disk>) -> Environment {
        let mut bytes = [0u8; 8];
        // Entropy enters only here; everything inside the node derives from `seed`.
        let seed = match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        Environment {
            seed,
            network: Arc::new(TcpNetwork),
            disk,
        }
    }
}
