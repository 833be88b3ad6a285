//! Step 11: rows to ClickHouse over HTTP, in batches.
//!
//! Two kinds of failure are kept apart: ClickHouse unreachable or busy (the batch waits
//! and is retried whole) and ClickHouse refusing the *data* of some rows (those rows are
//! found by halving the insert and handed back, so one bad row cannot stall a lane).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use flate2::write::GzEncoder;
use serde_json::Value;
use sluice_schema::clickhouse::{create_statements, Flavor};

use crate::rows::Table;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("clickhouse unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("clickhouse refused the query ({status}): {body}")]
    Refused { status: u16, code: Option<u32>, body: String },
    #[error("CLICKHOUSE_URL={url} is not usable: {reason}")]
    Setting { url: String, reason: String },
    #[error("CLICKHOUSE_CA_FILE={path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// Where ClickHouse is and who Sluice is to it.
#[derive(Clone)]
pub struct ClickHouseAccess {
    /// Without user info: reqwest quotes the URL in its errors, and those are logged.
    url: String,
    user: Option<String>,
    password: Option<String>,
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

    fn client(&self) -> Result<reqwest::Client, ClickHouseError> {
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

/// Exception codes that blame the data of a row (a value that does not parse as its
/// column's type), not the server, the schema or the query. Shared by 18.16 and modern
/// servers: CANNOT_PARSE_TEXT, CANNOT_PARSE_ESCAPE_SEQUENCE, CANNOT_PARSE_QUOTED_STRING,
/// CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_DATE, CANNOT_PARSE_DATETIME,
/// TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER,
/// INCORRECT_DATA, TOO_LARGE_STRING_SIZE, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
/// CANNOT_PARSE_UUID.
const ROW_DATA_CODES: [u32; 14] = [6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 376];

impl ClickHouseError {
    /// Whether some rows' data caused this. An unknown field means the table is older
    /// than the rows (a migration not applied): every row would fail, so that is an
    /// operator's problem to wait out, not a reason to dead-letter.
    pub fn blames_rows(&self) -> bool {
        match self {
            ClickHouseError::Refused { code: Some(code), body, .. } => {
                ROW_DATA_CODES.contains(code) && !body.contains("Unknown field")
            }
            _ => false,
        }
    }

    fn refused(status: u16, body: String) -> Self {
        // "Code: 27, e.displayText() = ..." (18.16) or "Code: 27. DB::Exception: ..." (modern).
        let code = body
            .strip_prefix("Code: ")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok());
        ClickHouseError::Refused { status, code, body: body.trim().to_string() }
    }
}

/// How insert bodies travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
}

pub struct ClickHouse {
    http: reqwest::Client,
    endpoint: ClickHouseAccess,
    compression: Compression,
    pub database: String,
    pub flavor: Flavor,
}

/// A row as `JSONEachRow` text and the index of the message it came from.
pub(crate) type SourcedRow = (usize, String);

/// A row built as a `Value` (the few side rows) as `JSONEachRow` text.
pub(crate) fn row_text(row: &Value) -> String {
    serde_json::to_string(row).expect("JSON values serialize")
}

impl ClickHouse {
    /// Connects and reads the server's version, which decides the column types.
    pub async fn connect(
        endpoint: &ClickHouseAccess,
        database: &str,
        compression: Compression,
    ) -> Result<Self, ClickHouseError> {
        let mut ch = ClickHouse {
            http: endpoint.client()?,
            endpoint: endpoint.clone(),
            compression,
            database: database.to_string(),
            flavor: Flavor::Legacy,
        };
        let version = ch.query("SELECT version()").await?;
        ch.flavor = Flavor::from_version(&version);
        Ok(ch)
    }

    /// Runs a statement (POST, so DDL and inserts are allowed) and returns its output.
    pub async fn query(&self, sql: &str) -> Result<String, ClickHouseError> {
        let response = self.post().body(sql.to_string()).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(ClickHouseError::refused(status.as_u16(), body));
        }
        Ok(body.trim().to_string())
    }

    fn post(&self) -> reqwest::RequestBuilder {
        let request = self.http.post(&self.endpoint.url);
        match &self.endpoint.user {
            // Basic authentication: what every ClickHouse since 18 reads.
            Some(user) => request.basic_auth(user, self.endpoint.password.as_deref()),
            None => request,
        }
    }

    pub async fn migrate(&self) -> Result<usize, ClickHouseError> {
        let statements = create_statements(self.flavor, &self.database);
        for sql in &statements {
            self.query(sql).await?;
        }
        Ok(statements.len())
    }

    /// Inserts the rows; returns those ClickHouse refused for their data, with its
    /// reason, after writing all the others. `Err` means nothing can be said about the
    /// rows (unreachable, overloaded, schema missing): retry later.
    ///
    /// A refused insert is split in halves until the refused rows stand alone: a batch
    /// with one bad row costs about 2·log2(n) extra inserts, and only in that case.
    pub async fn insert(
        &self,
        table: Table,
        rows: &[SourcedRow],
        dedup_token: &str,
    ) -> Result<Vec<(usize, String)>, ClickHouseError> {
        let refused = isolate_refused(rows.len(), dedup_token, |range, token| {
            self.insert_rows(table.name(), &rows[range], token)
        })
        .await?;
        Ok(refused.into_iter().map(|(i, why)| (rows[i].0, why)).collect())
    }

    /// One `JSONEachRow` insert. `dedup_token` identifies it, so a retried insert is
    /// dropped by servers that support it; elsewhere ReplacingMergeTree by uuid hides
    /// the repeat.
    async fn insert_rows(&self, table: &str, rows: &[SourcedRow], dedup_token: String) -> Result<(), ClickHouseError> {
        let mut body = format!("INSERT INTO {}.{table} FORMAT JSONEachRow\n", self.database).into_bytes();
        for (_, row) in rows {
            body.extend_from_slice(row.as_bytes());
            body.push(b'\n');
        }
        let mut request = self.post();
        request = match self.compression {
            Compression::None => request.body(body),
            Compression::Gzip => {
                // Level 1: most of gzip's saving on JSON rows at a fraction of its CPU.
                let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
                gz.write_all(&body).expect("writing to memory");
                request.header("Content-Encoding", "gzip").body(gz.finish().expect("writing to memory"))
            }
        };
        if self.flavor == Flavor::Modern {
            request = request.query(&[("insert_deduplication_token", &dedup_token)]);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(ClickHouseError::refused(status.as_u16(), response.text().await.unwrap_or_default()));
        }
        Ok(())
    }
}

/// Inserts rows `0..n` with `insert`, splitting a refused insert in halves until the
/// refused rows stand alone; returns them (by position) with the reason. The whole batch
/// keeps the batch's token; a part gets its own, so a retry of the same split is
/// deduplicated too. An error that does not blame the rows stops everything.
async fn isolate_refused<F, Fut>(
    n: usize,
    dedup_token: &str,
    mut insert: F,
) -> Result<Vec<(usize, String)>, ClickHouseError>
where
    F: FnMut(std::ops::Range<usize>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClickHouseError>>,
{
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    pending.push(0..n);
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        let token = if range.len() == n {
            dedup_token.to_string()
        } else {
            format!("{dedup_token}-{}-{}", range.start, range.end)
        };
        match insert(range.clone(), token).await {
            Ok(()) => {}
            Err(e) if e.blames_rows() && range.len() == 1 => refused.push((range.start, e.to_string())),
            Err(e) if e.blames_rows() => {
                let middle = range.start + range.len() / 2;
                pending.push(middle..range.end);
                pending.push(range.start..middle);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
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

    #[test]
    fn data_errors_blame_rows_and_the_rest_do_not() {
        let legacy = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc";
        assert!(ClickHouseError::refused(500, legacy.into()).blames_rows());
        let modern = "Code: 376. DB::Exception: Cannot parse uuid zz: (at row 1)";
        assert!(ClickHouseError::refused(500, modern.into()).blames_rows());
        let schema =
            "Code: 117, e.displayText() = DB::Exception: Unknown field found while parsing JSONEachRow format: x";
        assert!(!ClickHouseError::refused(500, schema.into()).blames_rows());
        let missing = "Code: 60, e.displayText() = DB::Exception: Table sluice.events doesn't exist.";
        assert!(!ClickHouseError::refused(404, missing.into()).blames_rows());
        let busy = "Code: 252. DB::Exception: Too many parts (300).";
        assert!(!ClickHouseError::refused(500, busy.into()).blames_rows());
        assert!(!ClickHouseError::refused(502, "Bad Gateway".into()).blames_rows());
    }

    /// A server that refuses any insert holding a bad row, and records what it wrote.
    async fn run_split(
        n: usize,
        bad: &[usize],
        fail_at_call: Option<usize>,
    ) -> (Result<Vec<usize>, String>, Vec<(std::ops::Range<usize>, String)>) {
        let calls = std::cell::RefCell::new(Vec::new());
        let written = std::cell::RefCell::new(Vec::new());
        let result = isolate_refused(n, "batch", |range, token| {
            calls.borrow_mut().push((range.clone(), token.clone()));
            let call = calls.borrow().len();
            let outcome = if fail_at_call == Some(call) {
                Err(ClickHouseError::refused(503, "Code: 252. DB::Exception: Too many parts (300).".into()))
            } else if range.clone().any(|i| bad.contains(&i)) {
                Err(ClickHouseError::refused(500, "Code: 27. DB::Exception: Cannot parse input: (at row 1)".into()))
            } else {
                written.borrow_mut().push((range, token));
                Ok(())
            };
            std::future::ready(outcome)
        })
        .await;
        (result.map(|r| r.into_iter().map(|(i, _)| i).collect()).map_err(|e| e.to_string()), written.into_inner())
    }

    #[tokio::test]
    async fn refused_rows_are_isolated_and_every_other_row_written_once() {
        for (n, bad) in
            [(1, vec![]), (7, vec![]), (7, vec![3]), (16, vec![0, 15]), (9, vec![2, 3, 4]), (5, vec![0, 1, 2, 3, 4])]
        {
            let (refused, written) = run_split(n, &bad, None).await;
            let mut refused = refused.unwrap();
            refused.sort_unstable();
            assert_eq!(refused, bad, "n={n}: exactly the bad rows are refused");
            let mut rows: Vec<usize> = written.iter().flat_map(|(r, _)| r.clone()).collect();
            rows.sort_unstable();
            let good: Vec<usize> = (0..n).filter(|i| !bad.contains(i)).collect();
            assert_eq!(rows, good, "n={n}: every good row written, and once");
            for (range, token) in &written {
                let expected =
                    if range.len() == n { "batch".to_string() } else { format!("batch-{}-{}", range.start, range.end) };
                assert_eq!(token, &expected, "a part has a token of its own");
            }
        }
    }

    #[tokio::test]
    async fn an_error_that_does_not_blame_the_rows_stops_the_batch() {
        let (result, _) = run_split(8, &[5], Some(2)).await;
        assert!(result.unwrap_err().contains("Too many parts"), "retried as a whole, nothing dead-lettered");
    }
}
