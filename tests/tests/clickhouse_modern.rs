//! The modern ClickHouse DDL (`DateTime64(6, 'UTC')`, insert deduplication) and the row
//! format ingest writes for it, checked against an embedded modern ClickHouse engine
//! (`chdb` from PyPI), since the local server is Debian's 18.16.

use std::process::Command;

use serde_json::{json, Value};
use sluice_ingest::rows::EventRow;
use sluice_schema::clickhouse::{create_statements, Flavor};
use sluice_tests::repo_root;
use time::macros::datetime;

#[test]
fn modern_ddl_and_rows_load_into_a_modern_clickhouse() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("chdb"));
    let rows_dir = dir.join("rows");
    std::fs::create_dir_all(&rows_dir).unwrap();
    let ddl = create_statements(Flavor::Modern, "sluice_modern").join(";\n");
    std::fs::write(dir.join("ddl.sql"), format!("{ddl};\n")).unwrap();

    let uuid = uuid::Uuid::now_v7();
    let row = EventRow {
        uuid,
        event: "signed_up".into(),
        properties: json!({"plan": "pro"}).as_object().unwrap().clone(),
        timestamp: datetime!(2024-05-01 10:00:00.123456 UTC),
        team_id: 7,
        distinct_id: "user-1".into(),
        elements_chain: String::new(),
        created_at: datetime!(2024-05-01 10:00:01 UTC),
        captured_at: datetime!(2024-05-01 10:00:00.5 UTC),
        person_id: sluice_schema::person_uuid(7, "user-1"),
        person_properties: json!({"email": "a@example.com"}).as_object().unwrap().clone(),
        person_created_at: datetime!(2024-04-01 00:00:00 UTC),
        person_mode: "full",
        groups: ["acme".into(), String::new(), String::new(), String::new(), String::new()],
    };
    // The same row twice, as a retried batch would write it: one row remains.
    let line = row.to_text(Flavor::Modern);
    std::fs::write(rows_dir.join("sluice_modern.events.jsonl"), format!("{line}\n{line}\n")).unwrap();

    let python = std::env::var("SLUICE_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv"))
        .join("bin/python");
    let out = Command::new(python)
        .arg(repo_root().join("tests/chdb/check.py"))
        .arg(dir.join("ddl.sql"))
        .arg(&rows_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chdb check failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let major: u32 = result["version"].as_str().unwrap().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 23, "a modern engine: {}", result["version"]);

    let events = &result["sluice_modern.events"];
    assert_eq!(events["types"]["timestamp"], "DateTime64(6, 'UTC')");
    let rows = events["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "ReplacingMergeTree by uuid: {rows:?}");
    let r = &rows[0];
    assert_eq!(r["uuid"], uuid.to_string());
    assert_eq!(r["timestamp"], "2024-05-01 10:00:00.123456", "microseconds kept");
    assert_eq!(r["captured_at"], "2024-05-01 10:00:00.500000");
    assert_eq!(r["team_id"], 7);
    assert_eq!(r["$group_0"], "acme");
    assert_eq!(r["person_mode"], "full");
    assert_eq!(serde_json::from_str::<Value>(r["properties"].as_str().unwrap()).unwrap(), json!({"plan": "pro"}));
    let _ = std::fs::remove_dir_all(dir);
}
