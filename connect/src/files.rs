//! Secrets as files. Kubernetes mounts a Secret as files, and a value in a file stays out
//! of `kubectl describe`, of the pod spec and of the environment of what the process
//! starts. For each setting listed here, `<NAME>_FILE` names a file whose content,
//! without its final line break, is taken as `<NAME>`.

use std::path::PathBuf;

/// The settings that carry credentials, each of which may come from `<NAME>_FILE`.
pub const SECRET_SETTINGS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "CLICKHOUSE_URL",
    "CLICKHOUSE_PASSWORD",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_KEY_PASSWORD",
];

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{name}_FILE={path}: {source}")]
    Unreadable { name: String, path: PathBuf, source: std::io::Error },
    #[error("both {name} and {name}_FILE are set; set only one")]
    Both { name: String },
    #[error("{name}_FILE={path} is not UTF-8 text")]
    NotText { name: String, path: PathBuf },
}

/// Reads every `<NAME>_FILE` of [`SECRET_SETTINGS`] into `<NAME>`, so the settings parser
/// finds it where it finds any other setting.
///
/// Sets environment variables: call it first thing in `main`, before any other thread
/// (the async runtime's, librdkafka's) exists.
pub fn load_secret_files() -> Result<(), FileError> {
    for name in SECRET_SETTINGS {
        let Some(path) = std::env::var_os(format!("{name}_FILE")).filter(|p| !p.is_empty()) else { continue };
        let path = PathBuf::from(path);
        if std::env::var_os(name).is_some() {
            return Err(FileError::Both { name: name.to_string() });
        }
        let bytes = std::fs::read(&path).map_err(|source| FileError::Unreadable {
            name: name.to_string(),
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| FileError::NotText { name: name.to_string(), path })?;
        std::env::set_var(name, text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text));
    }
    Ok(())
}
