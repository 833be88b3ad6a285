//! Redis clients from a `REDIS_URL`: `redis://` in the clear, `rediss://` over TLS (the
//! user and password, or an ACL user, in the URL), with an operator's CA and client
//! certificate when the server's certificate is not signed by a public one.

use std::path::{Path, PathBuf};

use clap::Args;
use redis::{ClientTlsConfig, TlsCertificates};

use crate::redact;

#[derive(Debug, Clone, Default, Args)]
pub struct RedisTls {
    /// CA certificates (PEM file) a rediss:// REDIS_URL's server is checked against;
    /// the system's and the public roots when unset.
    #[arg(long, env = "REDIS_TLS_CA_FILE", global = true)]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM file), for servers that require mutual TLS.
    #[arg(long, env = "REDIS_TLS_CERT_FILE", global = true)]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// Client private key (PEM file), with REDIS_TLS_CERT_FILE.
    #[arg(long, env = "REDIS_TLS_KEY_FILE", global = true)]
    pub redis_tls_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSettingError {
    #[error("REDIS_URL={url} is not usable: {reason}")]
    Unusable { url: String, reason: String },
    #[error("{setting} is set but REDIS_URL={url} does not use TLS (use rediss://)")]
    TlsUnused { setting: &'static str, url: String },
    #[error("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together; only one is set")]
    HalfAPair,
    #[error("{setting}={path}: {reason}")]
    FileUnreadable { setting: &'static str, path: PathBuf, reason: String },
}

impl RedisTls {
    /// The environment a child process reads these settings from (see [`RedisTls::from_vars`]).
    pub fn to_vars(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("REDIS_TLS_CA_FILE", &self.redis_tls_ca_file),
            ("REDIS_TLS_CERT_FILE", &self.redis_tls_cert_file),
            ("REDIS_TLS_KEY_FILE", &self.redis_tls_key_file),
        ]
        .into_iter()
        .filter_map(|(name, path)| Some((format!("{prefix}{name}"), path.as_ref()?.display().to_string())))
        .collect()
    }

    pub fn from_vars(prefix: &str) -> RedisTls {
        let var = |name: &str| std::env::var_os(format!("{prefix}{name}")).filter(|v| !v.is_empty()).map(PathBuf::from);
        RedisTls {
            redis_tls_ca_file: var("REDIS_TLS_CA_FILE"),
            redis_tls_cert_file: var("REDIS_TLS_CERT_FILE"),
            redis_tls_key_file: var("REDIS_TLS_KEY_FILE"),
        }
    }

    fn is_set(&self) -> Option<&'static str> {
        if self.redis_tls_ca_file.is_some() {
            Some("REDIS_TLS_CA_FILE")
        } else if self.redis_tls_cert_file.is_some() {
            Some("REDIS_TLS_CERT_FILE")
        } else if self.redis_tls_key_file.is_some() {
            Some("REDIS_TLS_KEY_FILE")
        } else {
            None
        }
    }
}

/// A client for `url`. Nothing is connected yet; what is checked here is everything that
/// can be checked without the server: the URL, that TLS settings go with a TLS URL, and
/// that the certificate files can be read.
pub fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, RedisSettingError> {
    let unusable = |e: redis::RedisError| RedisSettingError::Unusable {
        url: redact::url(url),
        reason: redact::scrub(&e.to_string(), redact::password(url)),
    };
    let uses_tls = url.starts_with("rediss://");
    match tls.is_set() {
        None => redis::Client::open(url).map_err(unusable),
        Some(setting) if !uses_tls => Err(RedisSettingError::TlsUnused { setting, url: redact::url(url) }),
        Some(_) => {
            let read = |setting: &'static str, path: &Path| {
                std::fs::read(path).map_err(|e| RedisSettingError::FileUnreadable {
                    setting,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            };
            let client_tls = match (&tls.redis_tls_cert_file, &tls.redis_tls_key_file) {
                (Some(cert), Some(key)) => Some(ClientTlsConfig {
                    client_cert: read("REDIS_TLS_CERT_FILE", cert)?,
                    client_key: read("REDIS_TLS_KEY_FILE", key)?,
                }),
                (None, None) => None,
                _ => return Err(RedisSettingError::HalfAPair),
            };
            let root_cert = tls.redis_tls_ca_file.as_deref().map(|ca| read("REDIS_TLS_CA_FILE", ca)).transpose()?;
            redis::Client::build_with_tls(url, TlsCertificates { client_tls, root_cert }).map_err(unusable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_supported_and_mismatches_refused() {
        crate::install_tls_provider();
        assert!(client("rediss://default:pw@cache:6380/0", &RedisTls::default()).is_ok());
        assert!(client("redis://127.0.0.1:6379", &RedisTls::default()).is_ok());
        let ca = RedisTls { redis_tls_ca_file: Some("/nonexistent/ca.pem".into()), ..RedisTls::default() };
        let err = client("redis://u:SECRETPW@cache:6379", &ca).unwrap_err().to_string();
        assert_eq!(
            err,
            "REDIS_TLS_CA_FILE is set but REDIS_URL=redis://u:***@cache:6379 does not use TLS (use rediss://)"
        );
        let err = client("rediss://u:SECRETPW@cache:6380", &ca).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_CA_FILE=/nonexistent/ca.pem: "), "{err}");
        let half = RedisTls { redis_tls_cert_file: Some("/c.pem".into()), ..RedisTls::default() };
        assert!(matches!(client("rediss://cache", &half), Err(RedisSettingError::HalfAPair)));
        let err = client("http://u:SECRETPW@cache", &RedisTls::default()).unwrap_err().to_string();
        assert!(!err.contains("SECRETPW"), "{err}");
    }

    #[test]
    fn settings_travel_to_a_child_by_environment() {
        let tls = RedisTls { redis_tls_ca_file: Some("/ca.pem".into()), ..RedisTls::default() };
        assert_eq!(tls.to_vars("X_"), vec![("X_REDIS_TLS_CA_FILE".to_string(), "/ca.pem".to_string())]);
    }
}
