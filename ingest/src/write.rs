//! Step 11: rows to ClickHouse over HTTP, in batches.

use std::time::Duration;

use serde_json::Value;
use sluice_schema::clickhouse::{create_statements, Flavor};

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("clickhouse unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("clickhouse refused the query ({status}): {body}")]
    Refused { status: u16, body: String },
}

pub struct ClickHouse {
    http: reqwest::Client,
    url: String,
    pub database: String,
    pub flavor: Flavor,
}

impl ClickHouse {
    /// Connects and reads the server's version, which decides the column types.
    pub async fn connect(url: &str, database: &str, timeout: Duration) -> Result<Self, ClickHouseError> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        let mut ch = ClickHouse {
            http,
            url: url.trim_end_matches('/').to_string(),
            database: database.to_string(),
            flavor: Flavor::Legacy,
        };
        let version = ch.query("SELECT version()").await?;
        ch.flavor = Flavor::from_version(&version);
        Ok(ch)
    }

    /// Runs a statement (POST, so DDL and inserts are allowed) and returns its output.
    pub async fn query(&self, sql: &str) -> Result<String, ClickHouseError> {
        let response = self.http.post(&self.url).body(sql.to_string()).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(ClickHouseError::Refused { status: status.as_u16(), body });
        }
        Ok(body.trim().to_string())
    }

    pub async fn migrate(&self) -> Result<usize, ClickHouseError> {
        let statements = create_statements(self.flavor, &self.database);
        for sql in &statements {
            self.query(sql).await?;
        }
        Ok(statements.len())
    }

    /// Inserts rows as `JSONEachRow`. `dedup_token` identifies the batch, so a retried
    /// insert is dropped by servers that support it; elsewhere ReplacingMergeTree by
    /// uuid hides the repeat.
    pub async fn insert(&self, table: &str, rows: &[Value], dedup_token: &str) -> Result<(), ClickHouseError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut body = format!("INSERT INTO {}.{table} FORMAT JSONEachRow\n", self.database);
        for row in rows {
            body.push_str(&row.to_string());
            body.push('\n');
        }
        let mut request = self.http.post(&self.url).body(body);
        if self.flavor == Flavor::Modern {
            request = request.query(&[("insert_deduplication_token", dedup_token)]);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(ClickHouseError::Refused {
                status: status.as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}
