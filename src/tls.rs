//! TLS with rustls: the server side of both listeners (`[server] tls_cert` and `tls_key`), and
//! the client side of the command-line clients (`--ca-cert`).
//!
//! Only the ring provider is compiled in, and every config names it, so nothing depends on a
//! process-wide default provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS file KafFlow could not use, named with the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Rejected(rustls::Error),
    #[error("{0:?} is not a host name or IP address for TLS")]
    ServerName(String),
}

/// The certificate chain and private key of the listeners, as the config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "TLS key";
    let pem = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: WHAT,
            path: path.to_path_buf(),
            expected: "private key (PKCS#8, PKCS#1 or SEC1 PEM)",
        },
        other => TlsError::Pem {
            what: WHAT,
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// The acceptor of both listeners. `alpn` is what the listener speaks (`http/1.1` for HTTP,
/// nothing for the TCP line protocol).
pub fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates("TLS certificate", &files.cert)?;
    let key = private_key(&files.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rejected)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client config that trusts the certificates in `ca` (a PEM file), or the public web's
/// roots when there is none.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates("CA certificate", path)? {
                roots.add(cert).map_err(TlsError::Rejected)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A connector for `host:port` addresses, and the name to check the server's certificate
/// against.
pub fn connector(
    ca: Option<&Path>,
    addr: &str,
) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
    let host = host_of(addr);
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::ServerName(host.to_string()))?;
    Ok((TlsConnector::from(Arc::new(client_config(ca)?)), name))
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            host
        }
        _ => addr,
    }
}

/// A reqwest client that trusts `ca` as well as the public web's roots.
pub fn http_client(ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca {
        for cert in certificates("CA certificate", path)? {
            let cert =
                reqwest::Certificate::from_der(cert.as_ref()).map_err(|e| TlsError::Pem {
                    what: "CA certificate",
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| TlsError::Pem {
        what: "CA certificate",
        path: ca.map(Path::to_path_buf).unwrap_or_default(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_taken_from_every_address_form() {
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("localhost:7070"), "localhost");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
        };
        let error = acceptor(&files, &[]).err().expect("refused").to_string();
        assert!(error.contains("junk.pem"), "{error}");
        assert!(error.contains("holds no certificate"), "{error}");
        let missing = TlsFiles {
            cert: dir.path().join("absent.pem"),
            key: junk,
        };
        let error = acceptor(&missing, &[]).err().expect("refused").to_string();
        assert!(error.contains("cannot read TLS certificate"), "{error}");
    }
}
