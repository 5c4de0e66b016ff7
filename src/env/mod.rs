//! The seams between node logic and the outside world: the network, the disk and the
//! seeded runtime, each with a production version. The simulator supplies its own
//! network and disk through the same traits. This is the only module (with main.rs)
//! that may touch real sockets, real files, threads or entropy.

pub mod bugs;
pub mod disk;
pub mod isolation;
pub mod launcher;
pub mod network;
pub mod process_tree;
pub mod runtime;
pub mod tls;

pub use disk::{Disk, DiskError, MemoryDisk, SledDisk};
pub use network::{Connection, Incoming, Network, NetworkError, TcpNetwork};
pub use runtime::SeededRuntime;

/// Time that means the same on every node: the leader stamps log entries with it, and
/// the state machine expires client sessions by those stamps. Node logic reads the
/// wall clock only through this seam; the simulator supplies simulated time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

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

/// An error and its sources, each part said once (layers often repeat their inner
/// error's text).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
        source = inner.source();
    }
    text
}
