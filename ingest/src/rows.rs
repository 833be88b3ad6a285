//! The ClickHouse rows ingest writes, typed, and their `JSONEachRow` form for a server
//! flavor (see `sluice_schema::clickhouse`). Kept apart from the steps so the modern
//! format can be checked against a modern engine without running the pipeline.

use serde_json::{json, Map, Value};
use sluice_schema::clickhouse::Flavor;
use time::OffsetDateTime;
use uuid::Uuid;

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

impl EventRow {
    pub fn to_json(&self, flavor: Flavor) -> Value {
        json!({
            "uuid": self.uuid,
            "event": self.event,
            "properties": Value::Object(self.properties.clone()).to_string(),
            "timestamp": flavor.format(self.timestamp),
            "team_id": self.team_id,
            "distinct_id": self.distinct_id,
            "elements_chain": self.elements_chain,
            "created_at": flavor.format(self.created_at),
            "captured_at": flavor.format(self.captured_at),
            "person_id": self.person_id,
            "person_properties": Value::Object(self.person_properties.clone()).to_string(),
            "person_created_at": flavor.format(self.person_created_at),
            "person_mode": self.person_mode,
            "$group_0": self.groups[0],
            "$group_1": self.groups[1],
            "$group_2": self.groups[2],
            "$group_3": self.groups[3],
            "$group_4": self.groups[4],
        })
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
