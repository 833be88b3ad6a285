//! One example row of each table, with what it reads back as: what the unit tests hold
//! each row's writer to, and what the server checks (18.16 and a modern engine) load.

use serde_json::{json, Value};
use sluice_schema::clickhouse::Flavor;
use time::macros::datetime;
use uuid::Uuid;

use super::{DistinctIdRow, Encoded, EventRow, GroupRow, PersonRow, PluginLogRow, Table, WarningRow};

/// A row of `table` with a distinct value in each column, and what a server should
/// read back as (`JSONEachRow` with 64-bit numbers unquoted). The match makes a new
/// table name its row here, so the checks that go over every table cover it.
pub fn example(table: Table, flavor: Flavor) -> (Encoded, Value) {
    let t = datetime!(2024-05-01 10:00:00.123456 UTC);
    let at = flavor.format(t);
    let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
    let props = json!({"plan": "pro", "quote": "\"\n"}).as_object().unwrap().clone();
    let text = Value::String(serde_json::to_string(&props).unwrap());
    match table {
        Table::Events => {
            let row = EventRow {
                uuid: id,
                event: "e".into(),
                properties: props.clone(),
                timestamp: t,
                team_id: -3,
                distinct_id: "d".into(),
                elements_chain: "a:b".into(),
                created_at: t + time::Duration::seconds(1),
                captured_at: t + time::Duration::seconds(2),
                person_id: other,
                person_properties: Default::default(),
                person_created_at: t + time::Duration::seconds(3),
                person_mode: "full",
                groups: ["g0".into(), "g1".into(), "g2".into(), "g3".into(), "g4".into()],
            };
            let plus = |s: i64| flavor.format(t + time::Duration::seconds(s));
            let expected = json!({
                "uuid": id.to_string(), "event": "e", "properties": text, "timestamp": at, "team_id": -3,
                "distinct_id": "d", "elements_chain": "a:b", "created_at": plus(1), "captured_at": plus(2),
                "person_id": other.to_string(), "person_properties": "{}", "person_created_at": plus(3),
                "person_mode": "full", "$group_0": "g0", "$group_1": "g1", "$group_2": "g2", "$group_3": "g3",
                "$group_4": "g4",
            });
            (row.encode(flavor), expected)
        }
        Table::Persons => {
            let row = PersonRow {
                id,
                team_id: 1,
                properties: &props,
                is_identified: true,
                created_at: t,
                version: 9,
                is_deleted: false,
            };
            let expected = json!({"id": id.to_string(), "team_id": 1, "properties": text, "is_identified": 1,
                "created_at": at, "version": 9, "is_deleted": 0});
            (row.encode(flavor), expected)
        }
        Table::PersonDistinctIds => {
            let row = DistinctIdRow { team_id: 1, distinct_id: "d", person_id: id, version: 4 };
            let expected =
                json!({"team_id": 1, "distinct_id": "d", "person_id": id.to_string(), "version": 4, "is_deleted": 0});
            (row.encode(flavor), expected)
        }
        Table::Groups => {
            let row = GroupRow { team_id: 1, type_index: 2, key: "k", properties: &props, created_at: t, version: 5 };
            let expected = json!({"team_id": 1, "group_type_index": 2, "group_key": "k", "group_properties": text,
                "created_at": at, "version": 5});
            (row.encode(flavor), expected)
        }
        Table::IngestionWarnings => {
            let row = WarningRow { team_id: 1, kind: "w", details: json!({"x": 1}), timestamp: t };
            let expected = json!({"team_id": 1, "type": "w", "details": "{\"x\":1}", "timestamp": at});
            (row.encode(flavor), expected)
        }
        Table::PluginLogEntries => {
            let row = PluginLogRow { team_id: 1, plugin_config_id: 2, level: "info", message: "m", timestamp: t };
            let expected =
                json!({"team_id": 1, "plugin_config_id": 2, "level": "info", "message": "m", "timestamp": at});
            (row.encode(flavor), expected)
        }
    }
}
