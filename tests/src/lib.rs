//! Helpers for the end-to-end tests in `tests/`: start the real binaries against the
//! real servers that `scripts/services.sh up` runs, give each test its own topics and
//! Redis keys so tests run in parallel, and read back what landed in Kafka.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

pub mod plugins;
pub mod receiver;
pub mod tls;

/// A plugin that counts its events in `ctx.cache` (Redis) into `properties.seen` and keeps
/// the last event name in `ctx.storage` (Postgres): it works only if both stores do.
pub const COUNTER_PLUGIN: &str = r#"
return {
    process_event = function(event, ctx)
        event.properties.seen = ctx.cache.incr("seen")
        ctx.storage.set("last", event.event)
        return event
    end,
}
"#;

/// The test tooling's Python (`SLUICE_VENV`, or the virtualenv `./dev test` makes).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var("SLUICE_VENV").map(PathBuf::from).unwrap_or_else(|_| repo_root().join(".venv"));
    venv.join("bin/python")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repo").to_path_buf()
}

pub fn kafka_hosts() -> String {
    std::env::var("KAFKA_HOSTS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Where cargo put the workspace binaries: beside the test executable's `deps/` folder,
/// unless `SLUICE_BIN_DIR` says otherwise.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built: run `cargo build --workspace --bins` first", path.display());
    path
}

/// The Tansu broker `scripts/services.sh` installs (`TANSU` overrides).
pub fn tansu_path() -> String {
    if let Ok(p) = std::env::var("TANSU") {
        return p;
    }
    let cargo_bin = format!("{}/.cargo/bin/tansu", std::env::var("HOME").unwrap_or_default());
    if std::path::Path::new(&cargo_bin).exists() {
        cargo_bin
    } else {
        "tansu".into()
    }
}

/// A process's peak resident memory (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("a number") * 1024
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Runs a future to completion from a synchronous test.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// The five topics of one test.
#[derive(Debug, Clone)]
pub struct TestTopics {
    pub main: String,
    pub overflow: String,
    pub historical: String,
    pub replay: String,
    pub replay_overflow: String,
}

impl TestTopics {
    pub fn create(kafka: &str, test: &str) -> TestTopics {
        Self::create_with_partitions(kafka, test, 2)
    }

    pub fn create_with_partitions(kafka: &str, test: &str, partitions: i32) -> TestTopics {
        let base = unique(test);
        let topics = TestTopics {
            main: format!("{base}-main"),
            overflow: format!("{base}-overflow"),
            historical: format!("{base}-historical"),
            replay: format!("{base}-replay"),
            replay_overflow: format!("{base}-replay-overflow"),
        };
        create_topics(kafka, &topics.all(), partitions);
        topics
    }

    pub fn all(&self) -> Vec<String> {
        vec![
            self.main.clone(),
            self.overflow.clone(),
            self.historical.clone(),
            self.replay.clone(),
            self.replay_overflow.clone(),
        ]
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KAFKA_TOPIC_MAIN".into(), self.main.clone()),
            ("KAFKA_TOPIC_OVERFLOW".into(), self.overflow.clone()),
            ("KAFKA_TOPIC_HISTORICAL".into(), self.historical.clone()),
            ("KAFKA_TOPIC_REPLAY".into(), self.replay.clone()),
            ("KAFKA_TOPIC_REPLAY_OVERFLOW".into(), self.replay_overflow.clone()),
        ]
    }
}

pub fn create_topics(kafka: &str, names: &[String], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka).create().expect("kafka admin client");
    let new: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let results =
        block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
            .expect("create topics request");
    for r in results {
        if let Err((name, e)) = r {
            assert!(e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists, "creating topic {name}: {e}");
        }
    }
}

/// One message as read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub value: Value,
}

impl Record {
    /// The event as the client sent it (the message's `data`), parsed.
    pub fn data(&self) -> Value {
        serde_json::from_str(self.value["data"].as_str().expect("data is a string")).expect("data is JSON")
    }
}

/// Reads `topic` from the beginning until at least `min` messages arrived and the topic
/// has been quiet for a moment, or `timeout` passed.
pub fn read_topic(kafka: &str, topic: &str, min: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition offset");
        }
    }
    consumer.assign(&tpl).expect("assign partitions");
    let quiet = Duration::from_millis(700);
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout && (out.len() < min || last.elapsed() < quiet) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    headers,
                    // JSON when it is JSON; anything else (a dead-lettered message) as text.
                    value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
                    }),
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// A running `sluice-capture`, stopped when dropped.
pub struct Capture {
    pub child: Child,
    pub url: String,
    pub topics: TestTopics,
    pub redis_prefix: String,
    pub log: PathBuf,
    pub kafka: String,
}

impl Capture {
    pub fn start(test: &str, env: &[(&str, &str)]) -> Capture {
        let kafka = env.iter().find(|(k, _)| *k == "KAFKA_HOSTS").map_or_else(kafka_hosts, |(_, v)| v.to_string());
        let topics = TestTopics::create(&kafka, test);
        Self::start_with_topics(test, topics, &kafka, env)
    }

    pub fn start_with_topics(test: &str, topics: TestTopics, kafka: &str, env: &[(&str, &str)]) -> Capture {
        let port = free_port();
        let redis_prefix = format!("{}/", unique(test));
        let log = std::env::temp_dir().join(format!("{}.capture.log", unique(test)));
        let mut cmd = Command::new(bin_path("sluice-capture"));
        cmd.env("ADDRESS", format!("127.0.0.1:{port}"))
            .env("KAFKA_HOSTS", kafka)
            .env("REDIS_URL", redis_url())
            .env("REDIS_KEY_PREFIX", &redis_prefix)
            .env("REDIS_REFRESH_INTERVAL_MS", "100")
            .env("LOG_FORMAT", "text")
            .envs(topics.env())
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log file"))
            .stderr(File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sluice-capture");
        let capture = Capture {
            child,
            url: format!("http://127.0.0.1:{port}"),
            topics,
            redis_prefix,
            log,
            kafka: kafka.to_string(),
        };
        capture.wait_ready(Duration::from_secs(30));
        capture
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(r) = http().get(format!("{}/_readiness", self.url)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("capture not ready after {timeout:?}; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::blocking::Body>) -> Response {
        Response::from(
            http()
                .post(format!("{}{path}", self.url))
                .header("content-type", content_type)
                .body(body)
                .send()
                .expect("POST"),
        )
    }

    pub fn get(&self, path: &str) -> Response {
        Response::from(http().get(format!("{}{path}", self.url)).send().expect("GET"))
    }

    pub fn read(&self, topic: &str, min: usize) -> Vec<Record> {
        read_topic(&self.kafka, topic, min, Duration::from_secs(20))
    }

    /// Sends SIGTERM to this process (by its pid) and waits for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(start.elapsed() < timeout, "capture did not exit within {timeout:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter's value from `/metrics`, summed over series whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.get("/metrics").text;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}

/// A response with its body read.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text))
    }
}

impl From<reqwest::blocking::Response> for Response {
    fn from(r: reqwest::blocking::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Response { status, headers, text: r.text().expect("response body") }
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Adds `member` to a Redis sorted set with a score `seconds` from now.
pub fn redis_zadd(key: &str, member: &str, seconds_from_now: i64) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    let until = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64 + seconds_from_now;
    redis::cmd("ZADD").arg(key).arg(until).arg(member).exec(&mut conn).expect("ZADD");
}

pub fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// Rows of a ClickHouse query (`FORMAT JSONEachRow` is appended).
pub fn clickhouse_rows(sql: &str) -> Vec<Value> {
    let r = http().post(clickhouse_url()).body(format!("{sql} FORMAT JSONEachRow")).send().expect("clickhouse query");
    let status = r.status();
    let text = r.text().expect("clickhouse answer");
    assert!(status.is_success(), "clickhouse: {text}");
    text.lines().map(|l| serde_json::from_str(l).expect("JSONEachRow line")).collect()
}

/// Polls `sql` until it returns at least `min` rows or `timeout` passes.
pub fn wait_for_rows(sql: &str, min: usize, timeout: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let rows = clickhouse_rows(sql);
        if rows.len() >= min || start.elapsed() > timeout {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs an operator command of `sluice-ingest` and returns its stdout. A command on the
/// shared Postgres (no `DATABASE_URL` of its own) finds it migrated.
pub fn ingest_command(args: &[&str], env: &[(&str, &str)]) -> String {
    if args.first() != Some(&"migrate") && !env.iter().any(|(k, _)| *k == "DATABASE_URL") {
        shared_databases_migrated();
    }
    let out =
        Command::new(bin_path("sluice-ingest")).args(args).envs(env.iter().copied()).output().expect("sluice-ingest");
    assert!(out.status.success(), "sluice-ingest {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Migrates the shared databases once per test process: a test that made its team before
/// starting an ingest (which migrates) found no `teams` table on a new machine, where
/// nothing had migrated Postgres yet.
fn shared_databases_migrated() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        ingest_command(&["migrate"], &[]);
    });
}

/// Creates a team and returns its token.
pub fn create_team(name: &str) -> String {
    ingest_command(&["teams", "create", "--name", name], &[]).lines().last().expect("token line").trim().to_string()
}

/// A running `sluice-ingest` consuming `topic` into a ClickHouse database of its own.
pub struct Ingest {
    pub child: Child,
    /// Health and metrics address, kept across restarts.
    address: String,
    pub database: String,
    pub dlq_topic: String,
    /// Where this test's event lane publishes written events for export plugins, and
    /// where its exports lane puts what they gave up on.
    pub exports_topic: String,
    pub exports_dlq_topic: String,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    /// The first process of a group owns (and drops) the ClickHouse database; members
    /// started with [`Ingest::member`] share it.
    owns_database: bool,
}

impl Ingest {
    /// Migrates a fresh ClickHouse database (and Postgres) and starts consuming `topic`.
    pub fn start(test: &str, topic: &str, extra: &[(&str, &str)]) -> Ingest {
        let database = unique(&format!("test_{test}")).replace('-', "_");
        let dlq_topic = format!("{}-dlq", unique(test));
        let exports_topic = format!("{}-exports", unique(test));
        let exports_dlq_topic = format!("{}-exports-dlq", unique(test));
        create_topics(&kafka_hosts(), &[dlq_topic.clone(), exports_dlq_topic.clone()], 1);
        create_topics(&kafka_hosts(), std::slice::from_ref(&exports_topic), 2);
        let mut env: Vec<(String, String)> = vec![
            ("CLICKHOUSE_DATABASE".into(), database.clone()),
            ("KAFKA_TOPIC".into(), topic.into()),
            ("KAFKA_GROUP_ID".into(), unique(test)),
            ("KAFKA_DLQ_TOPIC".into(), dlq_topic.clone()),
            ("KAFKA_EXPORTS_TOPIC".into(), exports_topic.clone()),
            ("KAFKA_EXPORTS_DLQ_TOPIC".into(), exports_dlq_topic.clone()),
            ("BATCH_MAX_WAIT_MS".into(), "200".into()),
            ("LOG_FORMAT".into(), "text".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ingest_command(&["migrate"], &pairs);
        let log = std::env::temp_dir().join(format!("{}.ingest.log", unique(test)));
        let address = format!("127.0.0.1:{}", free_port());
        let child = Self::spawn(&address, &env, &log);
        Ingest { child, address, database, dlq_topic, exports_topic, exports_dlq_topic, log, env, owns_database: true }
    }

    /// The exports lane of this ingest's pipeline (`LANE=exports` on its exports topic,
    /// a consumer group of its own), with `extra` settings on top of its own.
    pub fn exports_lane(&self, name: &str, extra: &[(&str, &str)]) -> Ingest {
        let mut env = self.env.clone();
        env.extend([
            ("LANE".to_string(), "exports".to_string()),
            ("KAFKA_TOPIC".to_string(), self.exports_topic.clone()),
            ("KAFKA_GROUP_ID".to_string(), format!("{}-exports", self.database)),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.member_with(name, env)
    }

    /// Another process in the same consumer group, writing to the same database, with a
    /// health address and log of its own.
    pub fn member(&self, name: &str) -> Ingest {
        self.member_with(name, self.env.clone())
    }

    fn member_with(&self, name: &str, env: Vec<(String, String)>) -> Ingest {
        let log = self.log.with_extension(format!("{name}.log"));
        let address = format!("127.0.0.1:{}", free_port());
        let child = Self::spawn(&address, &env, &log);
        Ingest {
            child,
            address,
            database: self.database.clone(),
            dlq_topic: self.dlq_topic.clone(),
            exports_topic: self.exports_topic.clone(),
            exports_dlq_topic: self.exports_dlq_topic.clone(),
            log,
            env,
            owns_database: false,
        }
    }

    /// `kill -TERM` (by this process's pid) and wait for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill -TERM");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(address: &str, env: &[(String, String)], log: &PathBuf) -> Child {
        let log_file = || std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
        Command::new(bin_path("sluice-ingest"))
            .env("ADDRESS", address)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file())
            .stderr(log_file())
            .spawn()
            .expect("start sluice-ingest")
    }

    /// `kill -9` (by this process's pid) and start again on the same group and database.
    pub fn kill_and_restart(&mut self) {
        Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status().expect("kill -9");
        let _ = self.child.wait();
        self.restart();
    }

    /// Starts the process again (after it exited) on the same group and database.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.address, &self.env, &self.log);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.database)
    }

    pub fn metrics(&self) -> String {
        http().get(format!("http://{}/metrics", self.address)).send().unwrap().text().unwrap()
    }

    /// Polls `/metrics` until every one of `wanted` appears in it; counters move after
    /// the writes they count, so a test that has seen the rows may still be early.
    pub fn wait_for_metrics(&self, wanted: &[&str], timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Not listening yet reads as nothing exported yet.
            let metrics = http()
                .get(format!("http://{}/metrics", self.address))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default();
            let missing: Vec<&&str> = wanted.iter().filter(|m| !metrics.contains(**m)).collect();
            if missing.is_empty() {
                return metrics;
            }
            assert!(std::time::Instant::now() < deadline, "missing from /metrics: {missing:?}\n{metrics}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_database {
            let _ = http().post(clickhouse_url()).body(format!("DROP DATABASE IF EXISTS {}", self.database)).send();
        }
    }
}

/// A TCP forwarder the test can cut and restore, to take a dependency away from one
/// process without stopping the server every other test uses.
pub struct Proxy {
    pub port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (en, op, target) = (enabled.clone(), open.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !en.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let pairs = [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())];
                op.lock().expect("lock").extend([client, server]);
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Proxy { port, enabled, open }
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.enabled.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sluice".into())
}

/// Runs a query against the project's Postgres (for checking what ingest wrote).
pub fn postgres<T, F>(f: F) -> T
where
    F: for<'c> FnOnce(&'c sqlx::PgPool) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'c>>,
{
    block_on(async {
        let pool = sqlx::PgPool::connect(&database_url()).await.expect("postgres");
        f(&pool).await
    })
}

/// A real PostHog SDK client, installed by the test command.
#[derive(Debug, Clone, Copy)]
pub enum Sdk {
    /// `posthog` from PyPI, in the project's virtualenv.
    Python,
    /// `posthog-node` from npm, in `tests/sdk/node/node_modules`.
    Node,
}

impl Sdk {
    /// The command that sends the fixed sequence of `tests/sdk/*/send.*` (one event,
    /// identify, alias, group identify, a grouped event) as `anon-<run>` / `user-<run>`.
    pub fn send_command(self, host: &str, token: &str, run: &str, gzip: bool) -> Command {
        let gzip = if gzip { "1" } else { "0" };
        match self {
            Sdk::Python => {
                let py = venv_python();
                assert!(py.exists(), "{} missing: the test command (./dev test) creates the virtualenv", py.display());
                let mut c = Command::new(py);
                c.arg(repo_root().join("tests/sdk/python/send.py")).args([host, token, run, gzip]);
                c
            }
            Sdk::Node => {
                let dir = repo_root().join("tests/sdk/node");
                assert!(
                    dir.join("node_modules/posthog-node").exists(),
                    "posthog-node not installed: ./dev test runs npm install in {}",
                    dir.display()
                );
                let mut c = Command::new("node");
                c.current_dir(dir).args(["send.mjs", host, token, run, gzip]);
                c
            }
        }
    }
}
