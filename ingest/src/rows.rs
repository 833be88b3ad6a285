//! The ClickHouse rows ingest writes, typed, and their `JSONEachRow` form for a server
//! flavor (see `sluice_schema::clickhouse`). Kept apart from the steps so the modern
//! format can be checked against a modern engine without running the pipeline.

use serde_json::{json, Map, Value};
use sluice_schema::clickhouse::Flavor;
use time::OffsetDateTime;
use uuid::Uuid;

/// The tables ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Events,
    Persons,
    PersonDistinctIds,
    Groups,
    IngestionWarnings,
    PluginLogEntries,
}

impl Table {
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
    pub person_properties: Map<String, Value>,
    pub person_created_at: OffsetDateTime,
    /// `full` when persons were processed, `propertyless` when not.
    pub person_mode: &'static str,
    pub groups: [String; 5],
}

/// A map as JSON text, written straight from it (not cloned into a `Value` and written
/// through `Display`, which profiled as a fifth of ingest's time).
fn text(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).expect("a JSON map writes")
}

impl EventRow {
    /// The row as `JSONEachRow` text, written straight from its fields: one event row
    /// per event, so no `Value` tree is built and dropped for it.
    pub fn to_text(&self, flavor: Flavor) -> String {
        let groups = &self.groups;
        let row = EventJson {
            uuid: self.uuid,
            event: &self.event,
            properties: text(&self.properties),
            timestamp: flavor.format(self.timestamp),
            team_id: self.team_id,
            distinct_id: &self.distinct_id,
            elements_chain: &self.elements_chain,
            created_at: flavor.format(self.created_at),
            captured_at: flavor.format(self.captured_at),
            person_id: self.person_id,
            person_properties: text(&self.person_properties),
            person_created_at: flavor.format(self.person_created_at),
            person_mode: self.person_mode,
            group_0: &groups[0],
            group_1: &groups[1],
            group_2: &groups[2],
            group_3: &groups[3],
            group_4: &groups[4],
        };
        serde_json::to_string(&row).expect("an event row writes")
    }
}

#[derive(serde::Serialize)]
struct EventJson<'a> {
    uuid: Uuid,
    event: &'a str,
    properties: String,
    timestamp: String,
    team_id: i64,
    distinct_id: &'a str,
    elements_chain: &'a str,
    created_at: String,
    captured_at: String,
    person_id: Uuid,
    person_properties: String,
    person_created_at: String,
    person_mode: &'a str,
    #[serde(rename = "$group_0")]
    group_0: &'a str,
    #[serde(rename = "$group_1")]
    group_1: &'a str,
    #[serde(rename = "$group_2")]
    group_2: &'a str,
    #[serde(rename = "$group_3")]
    group_3: &'a str,
    #[serde(rename = "$group_4")]
    group_4: &'a str,
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
    pub fn to_json(&self, flavor: Flavor) -> Value {
        json!({
            "team_id": self.team_id,
            "plugin_config_id": self.plugin_config_id,
            "level": self.level,
            "message": self.message,
            "timestamp": flavor.format(self.timestamp),
        })
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
    pub fn to_json(&self, flavor: Flavor) -> Value {
        json!({
            "id": self.id,
            "team_id": self.team_id,
            "properties": text(self.properties),
            "is_identified": u8::from(self.is_identified),
            "created_at": flavor.format(self.created_at),
            "version": self.version,
            "is_deleted": u8::from(self.is_deleted),
        })
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
    pub fn to_json(&self) -> Value {
        json!({
            "team_id": self.team_id,
            "distinct_id": self.distinct_id,
            "person_id": self.person_id,
            "version": self.version,
            "is_deleted": 0,
        })
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
    pub fn to_json(&self, flavor: Flavor) -> Value {
        json!({
            "team_id": self.team_id,
            "group_type_index": self.type_index,
            "group_key": self.key,
            "group_properties": text(self.properties),
            "created_at": flavor.format(self.created_at),
            "version": self.version,
        })
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
    pub fn to_json(&self, flavor: Flavor) -> Value {
        json!({
            "team_id": self.team_id,
            "type": self.kind,
            "details": self.details.to_string(),
            "timestamp": flavor.format(self.timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use sluice_schema::clickhouse::create_statements;

    /// The columns of `table` as the DDL declares them.
    fn columns(table: Table) -> BTreeSet<String> {
        let ddl = create_statements(Flavor::Modern, "db")
            .into_iter()
            .find(|sql| sql.contains(&format!("db.{} (", table.name())))
            .unwrap_or_else(|| panic!("no DDL for {}", table.name()));
        let body = &ddl[ddl.find('(').unwrap() + 1..ddl.find(") ENGINE").unwrap()];
        body.split(",\n").map(|line| line.split_whitespace().next().unwrap().trim_matches('`').to_string()).collect()
    }

    fn keys(row: Value) -> BTreeSet<String> {
        row.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn every_row_has_exactly_its_tables_columns() {
        let (t, props, id) = (OffsetDateTime::UNIX_EPOCH, Map::new(), Uuid::nil());
        let event = EventRow {
            uuid: id,
            event: "e".into(),
            properties: props.clone(),
            timestamp: t,
            team_id: 1,
            distinct_id: "d".into(),
            elements_chain: String::new(),
            created_at: t,
            captured_at: t,
            person_id: id,
            person_properties: props.clone(),
            person_created_at: t,
            person_mode: "full",
            groups: Default::default(),
        };
        let f = Flavor::Modern;
        let rows = [
            (Table::Events, serde_json::from_str(&event.to_text(f)).unwrap()),
            (
                Table::Persons,
                PersonRow {
                    id,
                    team_id: 1,
                    properties: &props,
                    is_identified: true,
                    created_at: t,
                    version: 0,
                    is_deleted: false,
                }
                .to_json(f),
            ),
            (
                Table::PersonDistinctIds,
                DistinctIdRow { team_id: 1, distinct_id: "d", person_id: id, version: 0 }.to_json(),
            ),
            (
                Table::Groups,
                GroupRow { team_id: 1, type_index: 0, key: "k", properties: &props, created_at: t, version: 0 }
                    .to_json(f),
            ),
            (
                Table::IngestionWarnings,
                WarningRow { team_id: 1, kind: "w", details: Value::Null, timestamp: t }.to_json(f),
            ),
            (
                Table::PluginLogEntries,
                PluginLogRow { team_id: 1, plugin_config_id: 2, level: "info", message: "m", timestamp: t }.to_json(f),
            ),
        ];
        for (table, row) in rows {
            assert_eq!(keys(row), columns(table), "{}", table.name());
        }
    }
}
