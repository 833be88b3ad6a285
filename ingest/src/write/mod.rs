//! Step 11: rows to ClickHouse over HTTP, in batches.
//!
//! Two kinds of failure are kept apart: ClickHouse unreachable or busy (the batch waits
//! and is retried whole) and ClickHouse refusing the *data* of some rows (those rows are
//! found by halving the insert and handed back, so one bad row cannot stall a lane).

mod access;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use flate2::write::GzEncoder;
use sluice_schema::clickhouse::{create_statements, Flavor, Topology};
use tracing::warn;

pub(crate) use access::ClickHouseAccess;

use crate::rows::{Encoded, Table};
use crate::telemetry;

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

/// Exception codes that blame the data of a row (a value that does not parse as its
/// column's type), not the server, the schema or the query. Shared by 18.16 and modern
/// servers: CANNOT_PARSE_TEXT, CANNOT_PARSE_ESCAPE_SEQUENCE, CANNOT_PARSE_QUOTED_STRING,
/// CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_DATE, CANNOT_PARSE_DATETIME,
/// TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER,
/// INCORRECT_DATA, TOO_LARGE_STRING_SIZE, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
/// CANNOT_PARSE_UUID.
const ROW_DATA_CODES: [u32; 14] = [6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 376];

impl ClickHouseError {
    /// Whether some rows' data caused this. A field the table lacks (a migration not
    /// applied) fails every row, and so does a binary header whose types the table no
    /// longer has (changed between the check and the insert): those are the operator's
    /// to wait out, not reasons to dead-letter.
    pub fn blames_rows(&self) -> bool {
        match self {
            ClickHouseError::Refused { code: Some(code), body, .. } => {
                ROW_DATA_CODES.contains(code)
                    && !body.contains("Unknown field")
                    && !body.contains("while reading header")
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
    pub topology: Topology,
    /// Tables last found with columns other than the rows' types, to log the change
    /// once each way.
    unlike: std::sync::Mutex<HashSet<Table>>,
}

/// A row's bytes and the index of the message it came from.
pub(crate) type SourcedRow = (usize, Encoded);

impl ClickHouse {
    /// Connects and reads the server's version, which decides the column types.
    pub async fn connect(
        endpoint: &ClickHouseAccess,
        database: &str,
        compression: Compression,
        topology: Topology,
    ) -> Result<Self, ClickHouseError> {
        let mut ch = ClickHouse {
            http: endpoint.client()?,
            endpoint: endpoint.clone(),
            compression,
            database: database.to_string(),
            flavor: Flavor::Legacy,
            topology,
            unlike: Default::default(),
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
        let statements = create_statements(self.flavor, &self.database, &self.topology);
        for sql in &statements {
            self.query(sql).await?;
        }
        Ok(statements.len())
    }

    /// Inserts the rows; returns those ClickHouse refused for their data, with its
    /// reason, after writing all the others. `Err` means nothing can be said about the
    /// rows (unreachable, overloaded, schema missing): retry later.
    ///
    /// Rows go as `RowBinary`, which the server reads by the column types the writer
    /// assumed, unchecked on 18.16: so the table's columns are read first, and a table
    /// whose types are not the rows' (an operator changed one) gets them as
    /// `JSONEachRow`, which the server parses value by value, refusing what does not fit.
    ///
    /// A refused insert is split in halves until the refused rows stand alone: a batch
    /// with one bad row costs about 2·log2(n) extra inserts, and only in that case.
    pub async fn insert(
        &self,
        table: Table,
        rows: &[SourcedRow],
        dedup_token: &str,
    ) -> Result<Vec<(usize, String)>, ClickHouseError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let binary = self.takes_binary(table).await?;
        if !binary {
            telemetry::clickhouse_text_insert(table.name());
        }
        let refused = isolate_refused(rows.len(), dedup_token, |range, token| {
            self.insert_rows(table, binary, &rows[range], token)
        })
        .await?;
        Ok(refused.into_iter().map(|(i, why)| (rows[i].0, why)).collect())
    }

    /// Whether `table` has every column the rows carry, of the type they are written
    /// as. Asked before each insert: a cached answer would let an `ALTER` made since
    /// misread rows on 18.16 (modern servers check the binary header themselves).
    async fn takes_binary(&self, table: Table) -> Result<bool, ClickHouseError> {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{}' FORMAT TSV",
            quote(&self.database),
            table.name()
        );
        let listed = self.query(&sql).await?;
        let types: HashMap<&str, &str> = listed.lines().filter_map(|line| line.split_once('\t')).collect();
        let fits = table.columns().iter().all(|(name, column)| types.get(name) == Some(&column.ddl(self.flavor)));
        let mut unlike = self.unlike.lock().expect("not poisoned");
        if !fits && unlike.insert(table) {
            warn!(
                table = table.name(),
                columns = %listed.replace('\n', ", "),
                "the table's columns are not the types ingest writes: its rows go as JSONEachRow, and \
                 ClickHouse refuses (and ingest dead-letters) the values that do not fit, until they match"
            );
        } else if fits && unlike.remove(&table) {
            warn!(table = table.name(), "the table's columns are the rows' types again: rows go as RowBinary");
        }
        Ok(fits)
    }

    /// One insert, `RowBinary` or `JSONEachRow`. `dedup_token` identifies it, so a
    /// retried insert is dropped by servers that support it; elsewhere
    /// ReplacingMergeTree by uuid hides the repeat.
    async fn insert_rows(
        &self,
        table: Table,
        binary: bool,
        rows: &[SourcedRow],
        dedup_token: String,
    ) -> Result<(), ClickHouseError> {
        let body = if binary {
            let mut body = table.binary_insert(&self.database, self.flavor);
            body.reserve(rows.iter().map(|(_, row)| row.len()).sum());
            for (_, row) in rows {
                body.extend_from_slice(row);
            }
            body
        } else {
            let mut body = table.text_insert(&self.database);
            for (_, row) in rows {
                table.json_line(self.flavor, row, &mut body);
            }
            body
        };
        let mut request = self.post();
        request = match self.compression {
            Compression::None => request.body(body),
            Compression::Gzip => {
                // Level 1: most of gzip's saving on rows of JSON texts at a fraction of its CPU.
                let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
                gz.write_all(&body).expect("writing to memory");
                request.header("Content-Encoding", "gzip").body(gz.finish().expect("writing to memory"))
            }
        };
        if self.flavor == Flavor::Modern {
            request = request.query(&[("insert_deduplication_token", &dedup_token)]);
        }
        if let Topology::Cluster(_) = self.topology {
            // The Distributed table answers after every shard's replica has the rows
            // (not after parking them on this node's disk to forward later), so an
            // acknowledged insert is as durable as on one server, and its blocks reach
            // each shard as this insert split them: a retry splits the same way, and the
            // replicas drop the repeated blocks.
            request = request.query(&[("insert_distributed_sync", "1")]);
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
    fn data_errors_blame_rows_and_the_rest_do_not() {
        let legacy = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc";
        assert!(ClickHouseError::refused(500, legacy.into()).blames_rows());
        let modern = "Code: 376. DB::Exception: Cannot parse uuid zz: (at row 1)";
        assert!(ClickHouseError::refused(500, modern.into()).blames_rows());
        let schema =
            "Code: 117, e.displayText() = DB::Exception: Unknown field found while parsing JSONEachRow format: x";
        assert!(!ClickHouseError::refused(500, schema.into()).blames_rows());
        let changed = "Code: 117. DB::Exception: Type of 's' must be UInt64, not String: (while reading header)";
        assert!(!ClickHouseError::refused(500, changed.into()).blames_rows());
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
