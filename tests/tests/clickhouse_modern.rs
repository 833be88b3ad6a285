//! The rows ingest writes, every table's, loaded into both kinds of server and read
//! back: the modern DDL (`DateTime64(6, 'UTC')`, insert deduplication) and
//! `RowBinaryWithNamesAndTypes` into an embedded modern ClickHouse engine (`chdb` from
//! PyPI), since the local server is Debian's 18.16, and the legacy DDL and `RowBinary`
//! into that local server.

use std::process::Command;

use serde_json::Value;
use sluice_ingest::rows::{example, Table};
use sluice_schema::clickhouse::{create_statements, Flavor, Topology};
use sluice_tests::{clickhouse_url, http, repo_root};

#[test]
fn every_tables_rows_load_into_a_modern_clickhouse() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("chdb"));
    let rows_dir = dir.join("rows");
    std::fs::create_dir_all(&rows_dir).unwrap();
    let database = "sluice_modern";
    let ddl = create_statements(Flavor::Modern, database, &Topology::Single).join(";\n");
    std::fs::write(dir.join("ddl.sql"), format!("{ddl};\n")).unwrap();
    let mut expected = Vec::new();
    for table in Table::ALL {
        let (row, read) = example(table, Flavor::Modern);
        // Every row twice, as a retried batch would write it: the engines that replace
        // by key keep one.
        // The insert as ingest sends it: the statement, then the column header and rows.
        let name = format!("{database}.{}", table.name());
        let mut insert = table.binary_insert(database, Flavor::Modern);
        let data = insert.split_off(insert.iter().position(|b| *b == b'\n').unwrap() + 1);
        std::fs::write(rows_dir.join(format!("{name}.sql")), insert).unwrap();
        std::fs::write(rows_dir.join(format!("{name}.bin")), [data.as_slice(), &row, &row].concat()).unwrap();
        expected.push((table, name, read));
    }

    let out = Command::new(sluice_tests::venv_python())
        .arg(repo_root().join("tests/chdb/check.py"))
        .arg(dir.join("ddl.sql"))
        .arg(&rows_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chdb check failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let major: u32 = result["version"].as_str().unwrap().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 23, "a modern engine: {}", result["version"]);

    assert_eq!(result["sluice_modern.events"]["types"]["timestamp"], "DateTime64(6, 'UTC')");
    for (table, name, read) in expected {
        let rows = result[&name]["rows"].as_array().unwrap_or_else(|| panic!("{name}: {result}"));
        let once = matches!(table, Table::Events | Table::Persons | Table::PersonDistinctIds | Table::Groups);
        assert_eq!(rows.len(), if once { 1 } else { 2 }, "{name}: {rows:?}");
        assert_eq!(rows[0], read, "{name}: microseconds, uuids and texts as written");
    }
    // A column an operator changed: the server refuses the whole insert by its header
    // (which ingest's `blames_rows` takes for the table's problem, not the rows').
    let drift = result["drift_error"].as_str().unwrap_or_else(|| panic!("a changed column was read: {result}"));
    assert!(drift.contains("while reading header") && drift.starts_with("Code: 117."), "{drift}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The cluster DDL on a modern server: chdb cannot create replicated tables (they need
/// ZooKeeper) nor reach a cluster, so the modern parser reads each statement (engines,
/// their arguments, `ON CLUSTER`); the cluster tests run the legacy DDL on a real cluster.
#[test]
fn the_modern_cluster_ddl_parses_on_a_modern_clickhouse() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("chdb-cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let statements = create_statements(Flavor::Modern, "sluice_modern", &Topology::Cluster("sluice".into()));
    assert!(statements.iter().any(|s| s.contains("ReplicatedReplacingMergeTree(")));
    assert!(statements.iter().any(|s| s.contains("ENGINE = Distributed(sluice, sluice_modern, sharded_events")));
    std::fs::write(dir.join("ddl.sql"), format!("{};\n", statements.join(";\n"))).unwrap();
    let out = Command::new(sluice_tests::venv_python())
        .arg(repo_root().join("tests/chdb/check.py"))
        .arg("--parse")
        .arg(dir.join("ddl.sql"))
        .output()
        .unwrap();
    assert!(out.status.success(), "chdb check failed: {}", String::from_utf8_lossy(&out.stderr));
    let refused: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refused, serde_json::json!([]), "statements a modern parser refuses");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_tables_rows_load_into_the_local_legacy_clickhouse() {
    let database = sluice_tests::unique("rowbinary").replace('-', "_");
    let run = |sql: &str, body: Vec<u8>| {
        let settings = [("query", sql), ("output_format_json_quote_64bit_integers", "0")];
        let r = http().post(clickhouse_url()).query(&settings).body(body).send().expect("clickhouse");
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "{sql}: {text}");
        text
    };
    let version = run("SELECT version()", vec![]);
    if Flavor::from_version(&version) != Flavor::Legacy {
        eprintln!("the local server is {version}: the modern check covers it");
        return;
    }
    for sql in create_statements(Flavor::Legacy, &database, &Topology::Single) {
        run(&sql, vec![]);
    }
    for table in Table::ALL {
        let (row, read) = example(table, Flavor::Legacy);
        let mut body = table.binary_insert(&database, Flavor::Legacy);
        body.extend_from_slice(&row);
        run("", body);
        let select = format!("SELECT * FROM {database}.{} FORMAT JSONEachRow", table.name());
        let rows: Vec<Value> = run(&select, vec![]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows, vec![read], "{}", table.name());
    }
    run(&format!("DROP DATABASE {database}"), vec![]);
}
