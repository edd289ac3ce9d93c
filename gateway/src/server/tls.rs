//! TLS with rustls (ring provider): the listeners' certificates, and the client side for
//! an `https://` upstream (system roots or a configured CA, optional client certificate).
//!
//! Every PEM problem is a [`ConfigError`] at the line and key that named the file, so a
//! broken certificate reads like any other config mistake, in `check-config`, at start
//! and on reload. Acceptors sit behind an [`ArcSwap`]: a reload swaps them, handshakes
//! in progress finish with the certificate they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use keyguard_config::{ConfigError, ConfigPath, TlsIdentity, UpstreamTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(file: &ConfigPath) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(&file.path)
        .map_err(|e| file.error(format!("cannot read {}: {e}", file.path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file.error(format!("{} is not PEM: {e}", file.path.display())))?;
    if certs.is_empty() {
        return Err(file.error(format!("{} holds no certificate", file.path.display())));
    }
    Ok(certs)
}

fn key(file: &ConfigPath) -> Result<PrivateKeyDer<'static>, ConfigError> {
    // The error never quotes the file's content: it is a private key.
    PrivateKeyDer::from_pem_file(&file.path).map_err(|e| {
        file.error(format!(
            "{} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            file.path.display()
        ))
    })
}

/// A listener's TLS configuration from its certificate and key, offering `alpn` in
/// order of preference.
pub fn server_config(
    id: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let chain = certs(&id.cert_file)?;
    let key = key(&id.key_file)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| id.cert_file.error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            id.key_file
                .error(format!("does not fit the certificate in cert_file: {e}"))
        })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The acceptor of a listener, swapped whole on reload.
pub struct Acceptor(ArcSwap<TlsAcceptor>);

impl Acceptor {
    /// An acceptor for `cfg`.
    pub fn new(cfg: Arc<rustls::ServerConfig>) -> Acceptor {
        Acceptor(ArcSwap::from_pointee(TlsAcceptor::from(cfg)))
    }

    /// The acceptor for the next handshake.
    pub fn current(&self) -> Arc<TlsAcceptor> {
        self.0.load_full()
    }

    /// Serves new handshakes with `cfg`.
    pub fn replace(&self, cfg: Arc<rustls::ServerConfig>) {
        self.0.store(Arc::new(TlsAcceptor::from(cfg)));
    }
}

/// The client side for an `https://` upstream. Offers only HTTP/1.1 in ALPN: each
/// worker's pool keeps HTTP/1 connections (`upstream::pool`).
pub fn client_config(
    tls: &UpstreamTls,
    config_file: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| ca.error(format!("not a usable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One odd certificate in the system bundle must not stop the gateway;
                // the rest still verify.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ConfigError {
                    file: config_file.to_path_buf(),
                    line: None,
                    key: Some("tls.upstream.ca_file".into()),
                    message: format!(
                        "the upstream is https:// but the system has no CA certificates \
                         ({} error(s) loading them); set ca_file",
                        found.errors.len()
                    ),
                });
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            file: config_file.to_path_buf(),
            line: None,
            key: Some("tls.upstream".into()),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut cfg = match &tls.client {
        Some(id) => builder
            .with_client_auth_cert(certs(&id.cert_file)?, key(&id.key_file)?)
            .map_err(|e| {
                id.key_file.error(format!(
                    "does not fit the certificate in client_cert_file: {e}"
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(cfg))
}

/// The upstream's TLS connector, swapped whole on reload (a new CA or client
/// certificate applies to new connections; pooled ones keep theirs).
pub struct Connector(ArcSwap<TlsConnector>);

impl Connector {
    /// A connector for `cfg`.
    pub fn new(cfg: Arc<rustls::ClientConfig>) -> Connector {
        Connector(ArcSwap::from_pointee(TlsConnector::from(cfg)))
    }

    /// The connector for the next connection.
    pub fn current(&self) -> Arc<TlsConnector> {
        self.0.load_full()
    }

    /// Uses `cfg` for new connections.
    pub fn replace(&self, cfg: Arc<rustls::ClientConfig>) {
        self.0.store(Arc::new(TlsConnector::from(cfg)));
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}
