//! The network seam: dialing a peer and accepting connections.
//!
//! Node logic only sees tonic `Channel`s and an `Incoming` stream of connections, so
//! the simulator can hand it turmoil's TCP instead of the kernel's.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::{Channel, Endpoint};

use super::tls::Tls;

/// How long dialing a peer may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Anything a connection can be: a kernel TCP stream or a simulated one.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One accepted connection, whatever carries it, and its place under a listener's
/// connection limit (freed when the connection is dropped).
pub struct Connection {
    io: Box<dyn Stream>,
    _place: Option<OwnedSemaphorePermit>,
}

impl Connection {
    pub fn new(stream: Box<dyn Stream>) -> Connection {
        Connection {
            io: stream,
            _place: None,
        }
    }
}

/// Connections one listener (the gRPC API, or `/mcp`) serves at once. One more is
/// closed as soon as it is accepted, so a flood of clients cannot take every file
/// descriptor from Raft's own connections and the data dir.
pub const MAX_CONNECTIONS: usize = 4_096;
/// How long a listener waits after a failed accept (out of file descriptors, say)
/// before it tries again, rather than spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The places under one listener's connection limit.
#[derive(Clone)]
pub struct ConnectionLimit {
    what: &'static str,
    places: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
}

impl ConnectionLimit {
    /// `what` names the listener in the warning a refusal logs.
    pub fn new(what: &'static str, max: usize) -> ConnectionLimit {
        ConnectionLimit {
            what,
            places: Arc::new(Semaphore::new(max)),
            refused: Arc::default(),
        }
    }

    /// The connection `stream`, if there is a place for it; otherwise it is closed.
    pub fn admit(&self, stream: Box<dyn Stream>) -> Option<Connection> {
        match self.places.clone().try_acquire_owned() {
            Ok(place) => Some(Connection {
                io: stream,
                _place: Some(place),
            }),
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused == 1 || refused.is_multiple_of(1_000) {
                    tracing::warn!(
                        listener = self.what,
                        refused,
                        "connection limit reached ({MAX_CONNECTIONS}): closing new \
                         connections until some close"
                    );
                }
                None
            }
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Accepts the next connection `listener` has a place for, waiting out failed accepts.
pub async fn accept_limited(
    listener: &tokio::net::TcpListener,
    limit: &ConnectionLimit,
) -> (Connection, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if let Some(connection) = limit.admit(Box::new(stream)) {
                    return (connection, peer);
                }
            }
            Err(error) => {
                tracing::warn!(listener = limit.what, %error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// The connections a listener accepts.
pub type Incoming = BoxStream<'static, std::io::Result<Connection>>;

#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// A lazily connecting channel to `addr` ("host:port"); it reconnects by itself.
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError>;
    /// Starts listening on `addr` ("host:port").
    async fn listen(&self, addr: &str) -> Result<Incoming, NetworkError>;
    /// The TLS settings the gRPC server serves with, if any.
    fn server_tls(&self) -> Option<tonic::transport::ServerTlsConfig> {
        None
    }
}

/// The endpoint settings every channel shares, whatever the transport.
pub fn endpoint(addr: &str) -> Result<Endpoint, NetworkError> {
    endpoint_with(addr, None)
}

/// As `endpoint`, over mutual TLS when `tls` is given (the peer's certificate must
/// name the host of `addr`).
pub fn endpoint_with(addr: &str, tls: Option<&Tls>) -> Result<Endpoint, NetworkError> {
    let invalid = |reason: String| NetworkError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.client_config(super::tls::host_of(addr)))
            .map_err(|e| invalid(super::error_chain(&e))),
    }
}

/// Production networking: kernel TCP, over mutual TLS when `tls` is set.
#[derive(Debug, Default, Clone)]
pub struct TcpNetwork {
    pub tls: Option<Arc<Tls>>,
}

#[async_trait]
impl Network for TcpNetwork {
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        Ok(endpoint_with(addr, self.tls.as_deref())?.connect_lazy())
    }

    fn server_tls(&self) -> Option<tonic::transport::ServerTlsConfig> {
        self.tls.as_ref().map(|tls| tls.server_config())
    }

    async fn listen(&self, addr: &str) -> Result<Incoming, NetworkError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NetworkError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let limit = ConnectionLimit::new("api", MAX_CONNECTIONS);
        let stream = futures::stream::unfold((listener, limit), |(listener, limit)| async move {
            let (connection, _) = accept_limited(&listener, &limit).await;
            Some((Ok(connection), (listener, limit)))
        });
        Ok(Box::pin(stream))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_listener_closes_connections_beyond_its_limit_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = ConnectionLimit::new("test", 2);
        let (kept_tx, mut kept) = tokio::sync::mpsc::unbounded_channel();
        let accepting = limit.clone();
        tokio::spawn(async move {
            loop {
                let (connection, _) = accept_limited(&listener, &accepting).await;
                if kept_tx.send(connection).is_err() {
                    return;
                }
            }
        });
        let wait = Duration::from_secs(10);
        let _clients = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let first = kept.recv().await.unwrap();
        let _second = kept.recv().await.unwrap();
        // A third is closed as soon as it is accepted.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(wait, third.read(&mut byte)).await;
        assert_eq!(read.expect("closed").unwrap_or(0), 0);
        assert_eq!(limit.refused(), 1);
        // Once one closes, the next finds a place.
        drop(first);
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let admitted = tokio::time::timeout(wait, kept.recv()).await;
        assert!(admitted.expect("admitted").is_some());
        assert_eq!(limit.refused(), 1);
    }
}
