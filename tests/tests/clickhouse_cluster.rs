//! Sluice on a real ClickHouse cluster: two shards of two replicas (four Debian
//! ClickHouse servers) and ZooKeeper, started by `scripts/cluster.sh`. Ignored in a plain
//! `cargo test`; `./dev test` runs them after starting the cluster (`./dev test cluster`
//! runs only them), with the cluster's addresses in `SLUICE_CLUSTER_URLS`.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_ingest::rows::Table;
use sluice_schema::clickhouse::{create_statements, Flavor, Topology};
use sluice_tests::{create_team, http, repo_root, unique, Capture, Ingest};

const NEEDS: &str = "needs the local cluster: ./dev test cluster";

/// The four nodes' HTTP addresses: shard 1 is nodes 1 and 2, shard 2 nodes 3 and 4.
fn nodes() -> Vec<String> {
    let urls = std::env::var("SLUICE_CLUSTER_URLS").expect(NEEDS);
    urls.split(',').map(str::to_string).collect()
}

fn cluster_name() -> String {
    std::env::var("SLUICE_CLUSTER_NAME").unwrap_or_else(|_| "sluice".into())
}

/// Stops or starts node `n` (1-4) through the cluster script, by its recorded pid.
fn node(action: &str, n: usize) -> Result<(), String> {
    let script = std::env::var("SLUICE_CLUSTER_SCRIPT").expect(NEEDS);
    let out = Command::new(script).args([action, &n.to_string()]).output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{action} {n}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Node `n`, stopped until this is dropped: a failing test leaves the cluster whole for
/// the next one.
struct Stopped(usize);

impl Stopped {
    fn node(n: usize) -> Stopped {
        node("stop", n).unwrap();
        Stopped(n)
    }

    fn start(self) {
        node("start", self.0).unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = node("start", self.0);
    }
}

/// One statement on node `n` (1-4), its output.
fn run(n: usize, sql: &str) -> Result<String, String> {
    let r = http()
        .post(&nodes()[n - 1])
        .query(&[("output_format_json_quote_64bit_integers", "0")])
        .body(sql.to_string())
        .send()
        .map_err(|e| e.to_string())?;
    let ok = r.status().is_success();
    let text = r.text().map_err(|e| e.to_string())?;
    if ok {
        Ok(text)
    } else {
        Err(text)
    }
}

/// One query on node `n` (1-4), its JSONEachRow rows.
fn query(n: usize, sql: &str) -> Result<Vec<Value>, String> {
    let text = run(n, &format!("{sql} FORMAT JSONEachRow"))?;
    Ok(text.lines().map(|l| serde_json::from_str(l).expect("a JSON row")).collect())
}

/// Waits until node `n`'s replica of `table` has fetched what its peer wrote.
fn sync_replica(n: usize, db: &str, table: &str) {
    run(n, &format!("SYSTEM SYNC REPLICA {db}.sharded_{table}")).unwrap();
}

fn count(n: usize, sql: &str) -> Result<u64, String> {
    Ok(query(n, sql)?[0]["n"].as_u64().expect("a count"))
}

/// Polls until `sql` on node `n` counts `want`, or panics after `timeout` with `why`.
fn wait_count(n: usize, sql: &str, want: u64, timeout: Duration, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = count(n, sql);
        if got == Ok(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} on node {n}: {got:?}, want {want}\n{}", why());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A capture and an ingest writing through node 1 into a database of their own, made on
/// the cluster.
fn pipeline(test: &str, extra: &[(&str, &str)]) -> (Capture, Ingest, String) {
    let cap = Capture::start(test, &[("OVERFLOW_ENABLED", "false")]);
    let (cluster, nodes) = (cluster_name(), nodes());
    let mut env = vec![
        ("CLICKHOUSE_URL", nodes[0].as_str()),
        ("CLICKHOUSE_CLUSTER", cluster.as_str()),
        ("RETRY_MAX_BACKOFF_MS", "500"),
    ];
    env.extend_from_slice(extra);
    let ingest = Ingest::start(test, &cap.topics.main, &env);
    let token = create_team(&unique(&format!("{test} team")));
    (cap, ingest, token)
}

/// A metric's value (0 when absent), its name with labels as exported.
fn metric(ingest: &Ingest, name: &str) -> f64 {
    let metrics = ingest.metrics();
    let line = metrics.lines().find(|l| l.starts_with(name));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn send(cap: &Capture, token: &str, events: &[(String, String)]) {
    for chunk in events.chunks(50) {
        let batch: Vec<_> = chunk.iter().map(|(event, id)| json!({"event": event, "distinct_id": id})).collect();
        let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string());
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

fn events(name: &str, n: usize, ids: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (name.to_string(), format!("user-{}", i % ids))).collect()
}

fn drop_database(db: &str) {
    let _ = run(1, &format!("DROP DATABASE IF EXISTS {db} ON CLUSTER {}", cluster_name()));
}

/// The distinct ids of `table` on one node (a shard's replica).
fn ids_on(n: usize, db: &str, table: &str) -> HashSet<String> {
    query(n, &format!("SELECT DISTINCT distinct_id FROM {db}.sharded_{table}"))
        .unwrap()
        .iter()
        .map(|r| r["distinct_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "needs the local cluster: ./dev test cluster"]
fn events_spread_over_both_shards_each_distinct_id_on_one_and_replicas_agree() {
    let (cap, ingest, token) = pipeline("cluster_spread", &[]);
    let db = ingest.database.clone();
    send(&cap, &token, &events("spread", 400, 40));
    wait_count(1, &format!("SELECT count() AS n FROM {db}.events FINAL"), 400, Duration::from_secs(60), || {
        ingest.log_text()
    });
    for n in [2, 4] {
        sync_replica(n, &db, "events");
    }
    let (one, two) = (ids_on(1, &db, "events"), ids_on(3, &db, "events"));
    assert!(!one.is_empty() && !two.is_empty(), "both shards hold events: {} / {}", one.len(), two.len());
    assert!(one.is_disjoint(&two), "a distinct id lives on one shard: {:?}", one.intersection(&two));
    assert_eq!(one.len() + two.len(), 40);
    assert_eq!(ids_on(2, &db, "events"), one, "shard 1's replicas agree");
    assert_eq!(ids_on(4, &db, "events"), two, "shard 2's replicas agree");
    let local = |n: usize| count(n, &format!("SELECT count() AS n FROM {db}.sharded_events")).unwrap();
    assert_eq!(local(1) + local(3), 400, "every event once, without FINAL");
    // A distinct id's person row and its distinct-id row are on the shard of its events.
    wait_count(
        1,
        &format!("SELECT count() AS n FROM {db}.person_distinct_ids FINAL"),
        40,
        Duration::from_secs(30),
        || ingest.log_text(),
    );
    assert_eq!(ids_on(1, &db, "person_distinct_ids"), one);
    assert_eq!(ids_on(3, &db, "person_distinct_ids"), two);
    assert_eq!(count(1, &format!("SELECT count() AS n FROM {db}.persons FINAL")).unwrap(), 40);
    drop(ingest);
    drop_database(&db);
}

#[test]
#[ignore = "needs the local cluster: ./dev test cluster"]
fn a_stopped_replica_leaves_writes_going_and_catches_up() {
    let (cap, ingest, token) = pipeline("cluster_replica", &[]);
    let db = ingest.database.clone();
    send(&cap, &token, &events("before", 100, 20));
    let all = format!("SELECT count() AS n FROM {db}.events FINAL");
    wait_count(1, &all, 100, Duration::from_secs(60), || ingest.log_text());

    let stopped = Stopped::node(4);
    send(&cap, &token, &events("during", 200, 20));
    wait_count(1, &all, 300, Duration::from_secs(60), || ingest.log_text());
    stopped.start();
    sync_replica(4, &db, "events");
    let local = |n: usize| count(n, &format!("SELECT count() AS n FROM {db}.sharded_events")).unwrap();
    assert_eq!(local(4), local(3), "the restarted replica has what its peer wrote while it was down");
    assert_eq!(local(1) + local(3), 300);
    drop(ingest);
    drop_database(&db);
}

#[test]
#[ignore = "needs the local cluster: ./dev test cluster"]
fn a_whole_shard_down_pauses_the_lane_and_nothing_is_lost() {
    let (cap, ingest, token) = pipeline("cluster_shard", &[("BATCH_MAX_EVENTS", "50")]);
    let db = ingest.database.clone();
    let all = format!("SELECT count() AS n FROM {db}.events FINAL");
    send(&cap, &token, &events("before", 100, 20));
    wait_count(1, &all, 100, Duration::from_secs(60), || ingest.log_text());

    let stopped = [Stopped::node(3), Stopped::node(4)];
    send(&cap, &token, &events("during", 300, 20));
    // The lane waits: its inserts fail until the shard is back (an asynchronous
    // Distributed insert would have parked the rows on node 1 and let the lane commit).
    // Shard 1 may take its part of a batch more than once; its replicas drop the
    // repeated blocks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&ingest, "ingest_dependency_retries_total{dependency=\"clickhouse\"}") < 3.0 {
        assert!(Instant::now() < deadline, "no ClickHouse retries while a shard is down\n{}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&ingest, "ingest_events_processed_total{lane=\"main\"}"), 100.0, "nothing committed meanwhile");
    stopped.into_iter().for_each(Stopped::start);
    wait_count(1, &all, 400, Duration::from_secs(90), || ingest.log_text());
    for n in [2, 4] {
        sync_replica(n, &db, "events");
    }
    let local = |n: usize| count(n, &format!("SELECT count() AS n FROM {db}.sharded_events")).unwrap();
    assert_eq!(local(1) + local(3), 400, "no event twice, even before merges");
    assert_eq!((local(2), local(4)), (local(1), local(3)), "replicas agree");
    drop(ingest);
    drop_database(&db);
}

#[test]
#[ignore = "needs the local cluster: ./dev test cluster"]
fn kill_9_between_write_and_commit_shows_every_event_once_through_the_distributed_table() {
    let (cap, mut ingest, token) =
        pipeline("cluster_kill", &[("BATCH_MAX_EVENTS", "25"), ("KAFKA_SESSION_TIMEOUT_MS", "6000")]);
    let db = ingest.database.clone();
    let total = 600;
    send(&cap, &token, &events("stream", total, 37));
    let raw = format!("SELECT count() AS n FROM {db}.events");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(1, &raw).unwrap_or(0) < 100 {
        assert!(Instant::now() < deadline, "ingest did not start: {}", ingest.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    ingest.kill_and_restart();
    let all = format!("SELECT count() AS n FROM {db}.events FINAL");
    wait_count(1, &all, total as u64, Duration::from_secs(90), || ingest.log_text());
    assert!(count(1, &raw).unwrap() >= total as u64);
    drop(ingest);
    drop_database(&db);
}

/// The modern cluster DDL run by a modern engine (chdb) on the cluster's ZooKeeper, as
/// the single-node modern DDL is run in `clickhouse_modern`: every table replicated with
/// the columns ingest writes, behind a Distributed table with the same columns. (chdb
/// runs no distributed DDL, so `ON CLUSTER` is taken out, and its replicated inserts wait
/// for a replication its embedded engine does not run, so no rows are loaded.)
#[test]
#[ignore = "needs the local cluster: ./dev test cluster"]
fn the_modern_cluster_ddl_makes_replicated_and_distributed_tables_on_a_modern_engine() {
    let zookeeper = std::env::var("SLUICE_CLUSTER_ZOOKEEPER").expect(NEEDS);
    let (host, port) = zookeeper.split_once(':').unwrap();
    let dir = std::env::temp_dir().join(unique("chdb-cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let replica = unique("chdb");
    std::fs::write(
        dir.join("config.xml"),
        format!(
            "<clickhouse><zookeeper><node><host>{host}</host><port>{port}</port></node></zookeeper>\
             <macros><shard>1</shard><replica>{replica}</replica></macros>\
             <remote_servers><sluice><shard><replica><host>127.0.0.1</host><port>9</port></replica></shard>\
             </sluice></remote_servers></clickhouse>"
        ),
    )
    .unwrap();
    let database = unique("modern_cluster").replace('-', "_");
    let ddl = create_statements(Flavor::Modern, &database, &Topology::Cluster(cluster_name()));
    std::fs::write(dir.join("ddl.sql"), format!("{};\n", ddl.join(";\n"))).unwrap();
    let out = Command::new(sluice_tests::venv_python())
        .arg(repo_root().join("tests/chdb/check.py"))
        .args(["--create", &dir.join("config.xml").to_string_lossy(), &dir.join("data").to_string_lossy()])
        .arg(dir.join("ddl.sql"))
        .output()
        .unwrap();
    assert!(out.status.success(), "chdb: {}", String::from_utf8_lossy(&out.stderr));
    let tables: Value = serde_json::from_slice(&out.stdout).unwrap();
    for table in Table::ALL {
        let columns: Vec<Value> =
            table.columns().iter().map(|(name, c)| json!([name, c.ddl(Flavor::Modern)])).collect();
        let sharded = &tables[format!("sharded_{}", table.name())];
        let engine = sharded["engine"].as_str().unwrap_or_else(|| panic!("no sharded_{}: {tables}", table.name()));
        assert!(engine.starts_with("Replicated"), "{engine}");
        assert!(engine.contains(&format!("/clickhouse/tables/{{shard}}/{database}.{}", table.name())), "{engine}");
        assert_eq!(sharded["columns"], json!(columns), "sharded_{}", table.name());
        let distributed = &tables[table.name()];
        assert!(distributed["engine"].as_str().unwrap().starts_with("Distributed('sluice'"), "{distributed}");
        assert_eq!(distributed["columns"], json!(columns), "{}", table.name());
    }
    let _ = std::fs::remove_dir_all(dir);
}
