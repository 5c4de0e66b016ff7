//! `mcpfleet cert ca|node|client`: a development CA and the certificates it signs, for
//! mutual TLS on the gRPC port (rcgen). Production clusters can use their own CA
//! instead (docs/operations.md, "TLS").

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::client::CliError;
use super::output::print_json;

/// Where the files go unless told otherwise.
pub const DEFAULT_CERT_DIR: &str = "certs";
/// Longest validity a certificate may be given.
const MAX_DAYS: i64 = 36_500;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a new CA: DIR/ca.pem (give it to every node and client) and DIR/ca-key.pem
    /// (keep it safe: whoever has it can join the cluster).
    Ca {
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Make a node's certificate, signed by DIR's CA, for both ends of its
    /// connections: DIR/node-ID.pem and DIR/node-ID-key.pem.
    Node {
        /// The node's id (its certificate's common name is node-ID).
        #[arg(long)]
        id: u64,
        /// A host others dial the node at, an IP address or DNS name (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Make a client's certificate, signed by DIR's CA: DIR/client-NAME.pem and
    /// DIR/client-NAME-key.pem.
    Client {
        /// The client's name (its certificate's common name).
        name: String,
        #[arg(long, default_value = DEFAULT_CERT_DIR)]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn failed(what: &str) -> impl Fn(rcgen::Error) -> CliError + '_ {
    move |e| CliError::Failed(format!("{what}: {e}"))
}

/// From a little before now (clocks differ) to `days` from now.
fn validity(params: &mut CertificateParams, days: i64) -> Result<(), CliError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(CliError::Usage(format!(
            "--days must be 1 to {MAX_DAYS}, not {days}"
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
    Ok(())
}

/// Writes `text` to a file that must not exist yet; keys are readable by their owner
/// only.
pub(super) fn write_new(path: &Path, text: &str, private: bool) -> Result<(), CliError> {
    if path.exists() {
        return Err(CliError::Failed(format!(
            "{} exists already; remove it first to make a new one",
            path.display()
        )));
    }
    let written = if private {
        super::import::write_private(path, text.as_bytes())
    } else {
        std::fs::write(path, text)
    };
    written.map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String, CliError> {
    let bytes = super::import::read_capped(path, crate::env::tls::MAX_PEM_BYTES as usize)?;
    String::from_utf8(bytes).map_err(|_| CliError::Failed(format!("{}: not PEM", path.display())))
}

/// The CA in `dir`, to sign with.
fn issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CliError> {
    let key =
        KeyPair::from_pem(&read_text(&dir.join("ca-key.pem"))?).map_err(failed("ca-key.pem"))?;
    Issuer::from_ca_cert_pem(&read_text(&dir.join("ca.pem"))?, key).map_err(failed("ca.pem"))
}

/// A certificate for `common_name` and `hosts`, signed by the CA in `dir`, written to
/// `dir/STEM.pem` and `dir/STEM-key.pem`; answers the two file names.
fn sign(
    dir: &Path,
    common_name: &str,
    stem: &str,
    hosts: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    days: i64,
) -> Result<[String; 2], CliError> {
    let issuer = issuer(dir)?;
    let mut params = CertificateParams::new(hosts).map_err(failed("subject alternative names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(failed("key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(failed("signing"))?;
    let files = [format!("{stem}.pem"), format!("{stem}-key.pem")];
    write_new(&dir.join(&files[1]), &key.serialize_pem(), true)?;
    write_new(&dir.join(&files[0]), &cert.pem(), false)?;
    Ok(files)
}

pub fn run_cert(command: CertCommand, json: bool) -> Result<(), CliError> {
    let (dir, written) = match command {
        CertCommand::Ca { dir, days } => {
            let mut params = CertificateParams::new(Vec::new()).map_err(failed("CA"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, "mcpfleet CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, days)?;
            let key = KeyPair::generate().map_err(failed("CA key"))?;
            let cert = params.self_signed(&key).map_err(failed("CA"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::Failed(format!("cannot make {}: {e}", dir.display())))?;
            write_new(&dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
            write_new(&dir.join("ca.pem"), &cert.pem(), false)?;
            (dir, ["ca.pem", "ca-key.pem"].map(String::from))
        }
        CertCommand::Node {
            id,
            hosts,
            dir,
            days,
        } => {
            let name = format!("node-{id}");
            let usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let files = sign(&dir, &name, &name, hosts, usages, days)?;
            (dir, files)
        }
        CertCommand::Client { name, dir, days } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(CliError::Usage(format!(
                    "invalid client name {name:?}: only letters, digits, '-', '_' and '.'"
                )));
            }
            let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let files = sign(
                &dir,
                &name,
                &format!("client-{name}"),
                Vec::new(),
                usages,
                days,
            )?;
            (dir, files)
        }
    };
    let paths: Vec<String> = written
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    if json {
        print_json(&serde_json::json!({"written": paths})).map_err(CliError::Failed)
    } else {
        for path in paths {
            println!("wrote {path}");
        }
        Ok(())
    }
}
