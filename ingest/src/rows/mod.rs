//! The ClickHouse rows ingest writes, typed, and their `RowBinary` form for a server
//! flavor (see `sluice_schema::clickhouse`). Kept apart from the steps so the modern
//! format can be checked against a modern engine without running the pipeline.

mod binary;
mod examples;

use serde_json::{Map, Value};
use sluice_schema::clickhouse::Flavor;
use time::OffsetDateTime;
use uuid::Uuid;

use binary::decode;
use binary::RowWriter;
pub use binary::{Column, Unreadable};
pub use examples::example;

/// A row as `RowBinary` bytes, in its table's column order.
pub type Encoded = Vec<u8>;

/// The tables ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Events,
    Persons,
    PersonDistinctIds,
    Groups,
    IngestionWarnings,
    PluginLogEntries,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Events,
        Table::Persons,
        Table::PersonDistinctIds,
        Table::Groups,
        Table::IngestionWarnings,
        Table::PluginLogEntries,
    ];

    /// Its name in ClickHouse (and the `table` label of the write metrics).
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Persons => "persons",
            Table::PersonDistinctIds => "person_distinct_ids",
            Table::Groups => "groups",
            Table::IngestionWarnings => "ingestion_warnings",
            Table::PluginLogEntries => "plugin_log_entries",
        }
    }

    /// The columns its rows carry, in the order they are written. An insert names
    /// them, so a column the table has and the rows do not takes its default.
    pub fn columns(self) -> &'static [(&'static str, Column)] {
        use Column::*;
        match self {
            Table::Events => &[
                ("uuid", Uuid),
                ("event", String),
                ("properties", String),
                ("timestamp", DateTime),
                ("team_id", Int64),
                ("distinct_id", String),
                ("elements_chain", String),
                ("created_at", DateTime),
                ("captured_at", DateTime),
                ("person_id", Uuid),
                ("person_properties", String),
                ("person_created_at", DateTime),
                ("person_mode", String),
                ("$group_0", String),
                ("$group_1", String),
                ("$group_2", String),
                ("$group_3", String),
                ("$group_4", String),
            ],
            Table::Persons => &[
                ("id", Uuid),
                ("team_id", Int64),
                ("properties", String),
                ("is_identified", UInt8),
                ("created_at", DateTime),
                ("version", UInt64),
                ("is_deleted", UInt8),
            ],
            Table::PersonDistinctIds => &[
                ("team_id", Int64),
                ("distinct_id", String),
                ("person_id", Uuid),
                ("version", Int64),
                ("is_deleted", UInt8),
            ],
            Table::Groups => &[
                ("team_id", Int64),
                ("group_type_index", UInt8),
                ("group_key", String),
                ("group_properties", String),
                ("created_at", DateTime),
                ("version", Int64),
            ],
            Table::IngestionWarnings => {
                &[("team_id", Int64), ("type", String), ("details", String), ("timestamp", DateTime)]
            }
            Table::PluginLogEntries => &[
                ("team_id", Int64),
                ("plugin_config_id", Int64),
                ("level", String),
                ("message", String),
                ("timestamp", DateTime),
            ],
        }
    }

    /// The start of a binary insert of its rows into `database`, rows to follow: the
    /// statement, and on modern servers the names and types of the columns, which the
    /// server checks against the table's (18.16 has no such format). The columns are
    /// named, so one the table has and the rows do not takes its default.
    pub fn binary_insert(self, database: &str, flavor: Flavor) -> Vec<u8> {
        let names: Vec<String> = self.columns().iter().map(|(name, _)| format!("`{name}`")).collect();
        let format = match flavor {
            Flavor::Legacy => "RowBinary",
            Flavor::Modern => "RowBinaryWithNamesAndTypes",
        };
        let mut out =
            format!("INSERT INTO {database}.{} ({}) FORMAT {format}\n", self.name(), names.join(", ")).into_bytes();
        if flavor == Flavor::Modern {
            binary::header(self.columns(), flavor, &mut out);
        }
        out
    }

    /// The start of a `JSONEachRow` insert of its rows into `database`, rows to follow
    /// as [`Table::json_line`]s.
    pub fn text_insert(self, database: &str) -> Vec<u8> {
        format!("INSERT INTO {database}.{} FORMAT JSONEachRow\n", self.name()).into_bytes()
    }

    /// A row as a `JSONEachRow` line, for a table whose columns are not the types the
    /// rows are written as: the server then parses each value into its column's type
    /// and refuses, row by row, those that do not fit.
    pub fn json_line(self, flavor: Flavor, row: &[u8], out: &mut Vec<u8>) {
        let row = self.decode(flavor, row).expect("ingest's own rows read back");
        serde_json::to_writer(&mut *out, &row).expect("a JSON map writes to memory");
        out.push(b'\n');
    }

    /// A row of this table read back (see [`decode`]).
    pub fn decode(self, flavor: Flavor, row: &[u8]) -> Result<Map<String, Value>, Unreadable> {
        decode(self.columns(), flavor, row)
    }
}

/// One row of `events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub uuid: Uuid,
    pub event: String,
    pub properties: Map<String, Value>,
    pub timestamp: OffsetDateTime,
    pub team_id: i64,
    pub distinct_id: String,
    pub elements_chain: String,
    pub created_at: OffsetDateTime,
    pub captured_at: OffsetDateTime,
    pub person_id: Uuid,
    /// Shared with the batch's view of the person (see `persons::Person`).
    pub person_properties: std::sync::Arc<Map<String, Value>>,
    pub person_created_at: OffsetDateTime,
    /// `full` when persons were processed, `propertyless` when not.
    pub person_mode: &'static str,
    pub groups: [String; 5],
}

impl EventRow {
    /// The row's bytes, written straight from its fields: one event row per event, so
    /// no tree is built and dropped for it.
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::with_capacity(256);
        let mut w = RowWriter::new(&mut out, flavor);
        w.uuid(self.uuid)
            .string(&self.event)
            .json(&self.properties)
            .datetime(self.timestamp)
            .int64(self.team_id)
            .string(&self.distinct_id)
            .string(&self.elements_chain)
            .datetime(self.created_at)
            .datetime(self.captured_at)
            .uuid(self.person_id)
            .json(&self.person_properties)
            .datetime(self.person_created_at)
            .string(self.person_mode);
        for group in &self.groups {
            w.string(group);
        }
        out
    }
}

/// One row of `plugin_log_entries`: a line a plugin logged, or why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLogRow<'a> {
    pub team_id: i64,
    pub plugin_config_id: i64,
    pub level: &'a str,
    pub message: &'a str,
    pub timestamp: OffsetDateTime,
}

impl PluginLogRow<'_> {
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::new();
        RowWriter::new(&mut out, flavor)
            .int64(self.team_id)
            .int64(self.plugin_config_id)
            .string(self.level)
            .string(self.message)
            .datetime(self.timestamp);
        out
    }
}

/// One row of `persons`: a person as written, or deleted by a merge.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonRow<'a> {
    pub id: Uuid,
    pub team_id: i64,
    pub properties: &'a Map<String, Value>,
    pub is_identified: bool,
    pub created_at: OffsetDateTime,
    pub version: i64,
    pub is_deleted: bool,
}

impl PersonRow<'_> {
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::new();
        RowWriter::new(&mut out, flavor)
            .uuid(self.id)
            .int64(self.team_id)
            .json(self.properties)
            .uint8(self.is_identified.into())
            .datetime(self.created_at)
            // Postgres counts versions from 0 up; a negative one never reaches here.
            .uint64(self.version.max(0) as u64)
            .uint8(self.is_deleted.into());
        out
    }
}

/// One row of `person_distinct_ids`: which person a distinct id points at, from which
/// version on.
#[derive(Debug, Clone, PartialEq)]
pub struct DistinctIdRow<'a> {
    pub team_id: i64,
    pub distinct_id: &'a str,
    pub person_id: Uuid,
    pub version: i64,
}

impl DistinctIdRow<'_> {
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::new();
        RowWriter::new(&mut out, flavor)
            .int64(self.team_id)
            .string(self.distinct_id)
            .uuid(self.person_id)
            .int64(self.version)
            .uint8(0);
        out
    }
}

/// One row of `groups`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow<'a> {
    pub team_id: i64,
    pub type_index: i16,
    pub key: &'a str,
    pub properties: &'a Map<String, Value>,
    pub created_at: OffsetDateTime,
    pub version: i64,
}

impl GroupRow<'_> {
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::new();
        RowWriter::new(&mut out, flavor)
            .int64(self.team_id)
            // Group type indexes are 0–4 (five `$group_N` columns).
            .uint8(self.type_index.clamp(0, u8::MAX.into()) as u8)
            .string(self.key)
            .json(self.properties)
            .datetime(self.created_at)
            .int64(self.version);
        out
    }
}

/// One row of `ingestion_warnings`: something about an event the team should know.
#[derive(Debug, Clone, PartialEq)]
pub struct WarningRow<'a> {
    pub team_id: i64,
    pub kind: &'a str,
    pub details: Value,
    pub timestamp: OffsetDateTime,
}

impl WarningRow<'_> {
    pub fn encode(&self, flavor: Flavor) -> Encoded {
        let mut out = Vec::new();
        RowWriter::new(&mut out, flavor)
            .int64(self.team_id)
            .string(self.kind)
            .string(&self.details.to_string())
            .datetime(self.timestamp);
        out
    }
}

#[cfg(test)]
mod tests {
    use sluice_schema::clickhouse::create_statements;

    use super::*;

    /// The columns of `table` and their types, in order, as the DDL declares them.
    fn ddl_columns(table: Table, flavor: Flavor) -> Vec<(String, String)> {
        let ddl = create_statements(flavor, "db", &sluice_schema::clickhouse::Topology::Single)
            .into_iter()
            .find(|sql| sql.contains(&format!("db.{} (", table.name())))
            .unwrap_or_else(|| panic!("no DDL for {}", table.name()));
        let body = &ddl[ddl.find('(').unwrap() + 1..ddl.find(") ENGINE").unwrap()];
        body.split(",\n")
            .map(|line| {
                let (name, kind) = line.trim().split_once(' ').unwrap();
                (name.trim_matches('`').to_string(), kind.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn every_table_writes_its_ddl_columns_with_their_types() {
        for flavor in [Flavor::Legacy, Flavor::Modern] {
            for table in Table::ALL {
                let ours: Vec<(String, String)> =
                    table.columns().iter().map(|(name, c)| (name.to_string(), c.ddl(flavor).to_string())).collect();
                assert_eq!(ours, ddl_columns(table, flavor), "{} ({flavor:?})", table.name());
            }
        }
    }

    #[test]
    fn every_row_reads_back_by_its_tables_columns() {
        for flavor in [Flavor::Legacy, Flavor::Modern] {
            for table in Table::ALL {
                let (bytes, expected) = example(table, flavor);
                let row = table.decode(flavor, &bytes).unwrap_or_else(|e| panic!("{}: {e}", table.name()));
                assert_eq!(Value::Object(row), expected, "{} ({flavor:?})", table.name());
            }
        }
    }

    #[test]
    fn a_binary_insert_names_every_column_and_on_modern_servers_their_types() {
        let legacy = Table::IngestionWarnings.binary_insert("db", Flavor::Legacy);
        assert_eq!(
            String::from_utf8(legacy).unwrap(),
            "INSERT INTO db.ingestion_warnings (`team_id`, `type`, `details`, `timestamp`) FORMAT RowBinary\n"
        );
        let modern = Table::IngestionWarnings.binary_insert("db", Flavor::Modern);
        let (statement, header) = modern.split_at(modern.iter().position(|b| *b == b'\n').unwrap() + 1);
        assert!(statement.ends_with(b"FORMAT RowBinaryWithNamesAndTypes\n"));
        let mut expected = vec![4];
        for text in ["team_id", "type", "details", "timestamp", "Int64", "String", "String", "DateTime64(6, 'UTC')"] {
            expected.push(text.len() as u8);
            expected.extend_from_slice(text.as_bytes());
        }
        assert_eq!(header, expected.as_slice());
    }

    #[test]
    fn a_json_line_is_the_row_as_its_columns_read() {
        for table in Table::ALL {
            let (row, read) = example(table, Flavor::Legacy);
            let mut line = Vec::new();
            table.json_line(Flavor::Legacy, &row, &mut line);
            assert_eq!(line.pop(), Some(b'\n'));
            assert_eq!(serde_json::from_slice::<Value>(&line).unwrap(), read, "{}", table.name());
        }
    }
}
