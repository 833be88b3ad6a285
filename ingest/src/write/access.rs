//! Where ClickHouse is and the credentials and CA ingest reaches it with.

use std::path::PathBuf;
use std::time::Duration;

use super::ClickHouseError;

/// Where ClickHouse is and who Sluice is to it.
#[derive(Clone)]
pub struct ClickHouseAccess {
    /// Without user info: reqwest quotes the URL in its errors, and those are logged.
    pub(super) url: String,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl std::fmt::Debug for ClickHouseAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseAccess").field("url", &self.url).field("user", &self.user).finish_non_exhaustive()
    }
}

impl ClickHouseAccess {
    /// `url` may carry the user and password (`https://user:password@host:8443`);
    /// `user` and `password`, when not empty, take their place.
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<ClickHouseAccess, ClickHouseError> {
        let unusable = |reason: String| ClickHouseError::Setting { url: sluice_connect::redact::url(url), reason };
        let mut parsed = reqwest::Url::parse(url).map_err(|e| unusable(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(unusable("the scheme must be http or https".into()));
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let given = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let user = given(user).or_else(|| given(&decode(parsed.username())));
        let password = given(password).or_else(|| parsed.password().map(decode).filter(|p| !p.is_empty()));
        if password.is_some() && user.is_none() {
            return Err(unusable("a password without a user (set CLICKHOUSE_USER)".into()));
        }
        if ca_file.is_some() && parsed.scheme() != "https" {
            return Err(unusable("CLICKHOUSE_CA_FILE is set but the URL is not https://".into()));
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let url = parsed.as_str().trim_end_matches('/').to_string();
        Ok(ClickHouseAccess { url, user, password, ca_file, timeout })
    }

    pub(super) fn client(&self) -> Result<reqwest::Client, ClickHouseError> {
        // rustls, explicitly, with the public roots plus the operator's CA.
        let mut builder = reqwest::Client::builder().use_rustls_tls().timeout(self.timeout);
        if let Some(path) = &self.ca_file {
            let ca_error = |reason: String| ClickHouseError::CaFile { path: path.clone(), reason };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no certificate in it".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(builder.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url_or_the_settings_and_leave_the_url() {
        let t = Duration::from_secs(1);
        let e = ClickHouseAccess::new("https://ch%40ops:p%2Fw@ch.example:8443/", "", "", None, t).unwrap();
        assert_eq!(
            (e.url.as_str(), e.user.as_deref(), e.password.as_deref()),
            ("https://ch.example:8443", Some("ch@ops"), Some("p/w"))
        );
        let e = ClickHouseAccess::new("https://a:b@ch.example:8443", "sluice", "SECRETPW", None, t).unwrap();
        assert_eq!((e.user.as_deref(), e.password.as_deref()), (Some("sluice"), Some("SECRETPW")));
        assert!(!format!("{e:?}").contains("SECRETPW"));
        let e = ClickHouseAccess::new("http://127.0.0.1:8123", "", "", None, t).unwrap();
        assert_eq!((e.url.as_str(), e.user.as_deref()), ("http://127.0.0.1:8123", None));
        let err = ClickHouseAccess::new("http://127.0.0.1:8123", "", "SECRETPW", None, t).unwrap_err().to_string();
        assert!(err.contains("without a user") && !err.contains("SECRETPW"), "{err}");
        let err = ClickHouseAccess::new("http://u:SECRETPW@ch:8123", "", "", Some("/ca.pem".into()), t)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "CLICKHOUSE_URL=http://u:***@ch:8123 is not usable: CLICKHOUSE_CA_FILE is set but the URL is not https://"
        );
        assert!(ClickHouseAccess::new("tcp://ch:9000", "", "", None, t).is_err());
    }
}
