//! `[tls.listen]`, `[tls.admin]`, `[tls.upstream]`: certificates for the two listeners and
//! what the gateway trusts (and presents) when it connects to the exchange.
//!
//! Only paths are read here; the gateway parses the PEM files (it owns rustls), and names
//! a bad file with the line and key kept in [`ConfigPath`], so a broken certificate is
//! reported like any other config mistake: `file:line: tls.listen.cert_file: …`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::de::{Name, Parsed};
use crate::error::{ConfigError, Source};

/// A file named in the config, with where it was named, for errors found when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The file, resolved against the config file's directory.
    pub path: PathBuf,
    /// The key that named it (`tls.listen.cert_file`).
    pub key: String,
    /// The line of the config file it was named on.
    pub line: usize,
    config_file: PathBuf,
}

impl ConfigPath {
    /// An error about this file, located at the line and key that named it.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.config_file.clone(),
            line: Some(self.line),
            key: Some(self.key.clone()),
            message: message.into(),
        }
    }
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert_file: ConfigPath,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: ConfigPath,
}

/// How the gateway connects to an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the exchange's certificate must chain to, instead of the
    /// system's roots.
    pub ca_file: Option<ConfigPath>,
    /// The client certificate the gateway presents (mTLS), so the exchange can
    /// authenticate the gateway per connection.
    pub client: Option<TlsIdentity>,
}

/// The validated `[tls]` tables. No table: plain TCP on that side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// TLS on the exchange-facing listener.
    pub listen: Option<TlsIdentity>,
    /// TLS on the admin listener.
    pub admin: Option<TlsIdentity>,
    /// Trust and client certificate for an `https://` upstream.
    pub upstream: UpstreamTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    listen: Option<RawIdentity>,
    admin: Option<RawIdentity>,
    upstream: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert_file: Spanned<Parsed<Name>>,
    key_file: Spanned<Parsed<Name>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca_file: Option<Spanned<Parsed<Name>>>,
    client_cert_file: Option<Spanned<Parsed<Name>>>,
    client_key_file: Option<Spanned<Parsed<Name>>>,
}

impl RawTls {
    pub(crate) fn resolve(
        self,
        src: &Source<'_>,
        config_file: &Path,
        config_dir: &Path,
    ) -> Result<TlsConfig, ConfigError> {
        let path = |v: Spanned<Parsed<Name>>, key: &str| ConfigPath {
            line: src.line(v.span().start),
            path: config_dir.join(&v.into_inner().0 .0),
            key: key.to_owned(),
            config_file: config_file.to_path_buf(),
        };
        let identity = |raw: RawIdentity, table: &str| TlsIdentity {
            cert_file: path(raw.cert_file, &format!("{table}.cert_file")),
            key_file: path(raw.key_file, &format!("{table}.key_file")),
        };
        let upstream = match self.upstream {
            None => UpstreamTls::default(),
            Some(u) => {
                let client = match (u.client_cert_file, u.client_key_file) {
                    (Some(c), Some(k)) => Some(TlsIdentity {
                        cert_file: path(c, "tls.upstream.client_cert_file"),
                        key_file: path(k, "tls.upstream.client_key_file"),
                    }),
                    (None, None) => None,
                    (Some(c), None) => {
                        return Err(src.error_at(
                            c.span(),
                            "tls.upstream.client_cert_file",
                            "needs client_key_file too",
                        ))
                    }
                    (None, Some(k)) => {
                        return Err(src.error_at(
                            k.span(),
                            "tls.upstream.client_key_file",
                            "needs client_cert_file too",
                        ))
                    }
                };
                UpstreamTls {
                    ca_file: u.ca_file.map(|c| path(c, "tls.upstream.ca_file")),
                    client,
                }
            }
        };
        Ok(TlsConfig {
            listen: self.listen.map(|r| identity(r, "tls.listen")),
            admin: self.admin.map(|r| identity(r, "tls.admin")),
            upstream,
        })
    }
}
