//! Postgres connection options from a `DATABASE_URL`, with TLS as libpq's URLs ask for
//! it: `sslmode` (disable, prefer, require, verify-ca, verify-full), `sslrootcert`,
//! `sslcert` and `sslkey` in the query string.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::redact;

#[derive(Debug, thiserror::Error)]
pub enum PostgresSettingError {
    #[error("DATABASE_URL={url} is not usable: {reason}")]
    Unusable { url: String, reason: String },
    #[error("DATABASE_URL={url} names {parameter}={path}, which cannot be read: {reason}")]
    FileUnreadable { url: String, parameter: String, path: String, reason: String },
}

/// Parses `url`. A certificate file the URL names is read here, so a wrong path stops
/// the process at start-up instead of failing every connection later.
pub fn options(url: &str) -> Result<PgConnectOptions, PostgresSettingError> {
    let redacted = || redact::url(url);
    let options = PgConnectOptions::from_str(url).map_err(|e| PostgresSettingError::Unusable {
        url: redacted(),
        reason: redact::scrub(&e.to_string(), redact::password(url)),
    })?;
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    for pair in query.split('&') {
        let Some((parameter, path)) = pair.split_once('=') else { continue };
        if matches!(parameter, "sslrootcert" | "sslcert" | "sslkey" | "ssl-root-cert" | "ssl-cert" | "ssl-key") {
            if let Err(e) = std::fs::File::open(path) {
                return Err(PostgresSettingError::FileUnreadable {
                    url: redacted(),
                    parameter: parameter.to_string(),
                    path: path.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_and_missing_files_refused() {
        assert!(options("postgres://u:pw@db:5432/sluice?sslmode=require").is_ok());
        let err = options("postgres://u:SECRETPW@db/sluice?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert=/nonexistent/ca.pem"), "{err}");
        assert!(!err.contains("SECRETPW"), "{err}");
        let err = options("postgres://u:SECRETPW@db/sluice?sslmode=sometimes").unwrap_err().to_string();
        assert!(err.starts_with("DATABASE_URL=postgres://u:***@db/sluice"), "{err}");
        assert!(!err.contains("SECRETPW"), "{err}");
    }
}
