//! The network seam: dialing a peer and accepting connections.
//!
//! Node logic only sees tonic `Channel`s and an `Incoming` stream of connections, so
//! the simulator can hand it turmoil's TCP instead of the kernel's.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

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

/// One accepted connection, whatever carries it.
pub struct Connection(pub Box<dyn Stream>);

/// The connections a listener accepts.
pub type Incoming = BoxStream<'static, std::io::Result<Connection>>;

#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// A lazily connecting channel to `addr` ("host:port"); it reconnects by itself.
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError>;
    /// Starts listening on `addr` ("host:port").
    async fn listen(&self, addr: &str) -> Result<Incoming, NetworkError>;
}

/// The endpoint settings every channel shares, whatever the transport.
pub fn endpoint(addr: &str) -> Result<Endpoint, NetworkError> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| NetworkError::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Production networking: kernel TCP.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpNetwork;

#[async_trait]
impl Network for TcpNetwork {
    fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        Ok(endpoint(addr)?.connect_lazy())
    }

    async fn listen(&self, addr: &str) -> Result<Incoming, NetworkError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NetworkError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let stream = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                Connection(Box::new(stream))
            });
            Some((accepted, listener))
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
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
