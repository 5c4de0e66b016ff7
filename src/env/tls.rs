//! Mutual TLS on the gRPC port (rustls, through tonic).
//!
//! With TLS on, a node serves only TLS, and only to peers that present a certificate
//! signed by the cluster's CA: other nodes (for Raft, forwarding and tool calls) and
//! clients alike. It dials other nodes with its own certificate, and checks theirs
//! against the same CA and the address it dials (an IP address or DNS name in the
//! certificate's subject alternative names).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Largest PEM file read (a certificate chain or a key).
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no {what} in PEM form")]
    NotPem { path: String, what: &'static str },
    #[error("{0}")]
    Incomplete(String),
    #[error("the TLS settings are refused: {0}")]
    Refused(String),
}

/// The three files of a TLS identity: the CA that signs every member's certificate,
/// this member's certificate, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files given, or none: all three or nothing. `names` are the flags, for the
    /// error.
    pub fn from_parts(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        names: [&str; 3],
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.to_path_buf(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })),
            _ => Err(TlsError::Incomplete(format!(
                "TLS needs all of {}, {} and {}, or none of them",
                names[0], names[1], names[2]
            ))),
        }
    }
}

/// A loaded TLS identity and the CA it trusts.
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
}

fn read_pem(path: &Path, what: &'static str, marker: &str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let failed = |e: std::io::Error| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(failed)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Read {
            path: path.display().to_string(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(marker) {
        return Err(TlsError::NotPem {
            path: path.display().to_string(),
            what,
        });
    }
    Ok(bytes)
}

impl Tls {
    /// Reads and checks the files: each must be PEM of its kind, and rustls must take
    /// them (a key that does not match the certificate is refused here, not at the
    /// first connection).
    pub fn load(files: &TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let ca = read_pem(&files.ca, "certificate", "CERTIFICATE")?;
        let cert = read_pem(&files.cert, "certificate", "CERTIFICATE")?;
        let key = read_pem(&files.key, "private key", "PRIVATE KEY")?;
        let tls = Tls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        };
        // tonic parses lazily: build a server and an endpoint with them now.
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| TlsError::Refused(super::error_chain(&e)))?;
        tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(tls.client_config("127.0.0.1"))
            .map_err(|e| TlsError::Refused(super::error_chain(&e)))?;
        Ok(Arc::new(tls))
    }

    /// The TLS of whichever files are given: all three, or none (then `None`).
    /// `names` are the flags or parameters, for the error.
    pub fn load_given(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        names: [&str; 3],
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        TlsFiles::from_parts(ca, cert, key, names)?
            .map(|files| Tls::load(&files))
            .transpose()
    }

    /// What the gRPC server uses: this identity, and only clients the CA signed.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// What a connection to `host` uses: this identity, and the CA to check the
    /// peer's certificate against `host`.
    pub fn client_config(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
    }
}

/// The host of HOST:PORT (brackets kept for IPv6), what a peer's certificate must name.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// The common name of a certificate (DER), if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
