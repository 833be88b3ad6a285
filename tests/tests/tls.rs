//! Both binaries against servers that speak only TLS and demand credentials (see
//! `sluice_tests::tls`): a real SDK's events go capture → Kafka (SASL_SSL, SCRAM-SHA-512,
//! client certificate) → ingest, whose plugin worker uses Redis (rediss://, ACL user,
//! client certificate) and Postgres (verify-full, client certificate), → ClickHouse
//! (https, password). Then each credential is made wrong in turn: the process says which
//! dependency refused it, and no password appears in anything it printed.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::tls::TlsStack;
use sluice_tests::{bin_path, free_port, http, unique, Sdk};

use sluice_tests::COUNTER_PLUGIN as COUNTER;

struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(bin: &str, env: &[(String, String)], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin_path(bin))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start");
        Process { child, log }
    }

    /// `sluice-capture` with `env` on a port of its own; returns it and its address.
    fn capture(env: &[(String, String)], tag: &str) -> (Process, String) {
        let address = format!("127.0.0.1:{}", free_port());
        let mut env = env.to_vec();
        set(&mut env, "ADDRESS", &address);
        let log = std::env::temp_dir().join(format!("{}.log", unique(tag)));
        (Process::start("sluice-capture", &env, log), address)
    }

    fn wait_for_log(&self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log_text().contains(text) {
            assert!(start.elapsed() < timeout, "{text:?} not logged:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, address: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before it was ready:\n{}", self.log_text());
            }
            if http().get(format!("http://{address}/_readiness")).send().is_ok_and(|r| r.status() == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ingest(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(bin_path("sluice-ingest"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("sluice-ingest")
}

fn ingest_ok(args: &[&str], env: &[(String, String)]) -> String {
    let out = ingest(args, env);
    assert!(out.status.success(), "sluice-ingest {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

fn assert_no_secret(what: &str, output: &str, stack: &TlsStack) {
    for secret in [&stack.kafka_password, &stack.redis_password, &stack.postgres_password, &stack.clickhouse_password] {
        assert!(!output.contains(secret.as_str()), "{what} printed a password:\n{output}");
    }
}

fn redis_zadd(stack: &TlsStack, key: &str, member: &str) {
    let url = stack.env().into_iter().find(|(k, _)| k == "REDIS_URL").expect("REDIS_URL").1;
    let tls = sluice_connect::redis::RedisTls {
        redis_tls_ca_file: Some(stack.ca()),
        redis_tls_cert_file: Some(stack.client_cert()),
        redis_tls_key_file: Some(stack.client_key()),
    };
    sluice_connect::install_tls_provider();
    let client = sluice_connect::redis::client(&url, &tls).expect("redis client");
    let mut conn = client.get_connection().expect("redis over TLS");
    redis::cmd("ZADD").arg(key).arg(i64::MAX / 2).arg(member).exec(&mut conn).expect("ZADD");
}

fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("plugin-tls-counter"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.json"), json!({"name": "counter"}).to_string()).unwrap();
    std::fs::write(dir.join("main.lua"), COUNTER).unwrap();
    dir
}

/// The environment of one pipeline on the stack: a Postgres and a ClickHouse database
/// of its own, its own consumer group and Redis keys.
fn pipeline_env(stack: &TlsStack, test: &str) -> Vec<(String, String)> {
    let mut env = stack.env();
    let database = unique(&format!("sluice_{test}")).replace('-', "_");
    set(&mut env, "DATABASE_URL", &stack.create_database(&database));
    set(&mut env, "CLICKHOUSE_DATABASE", &database);
    set(&mut env, "KAFKA_GROUP_ID", &unique(test));
    set(&mut env, "REDIS_KEY_PREFIX", &format!("{}/", unique(test)));
    set(&mut env, "REDIS_REFRESH_INTERVAL_MS", "100");
    set(&mut env, "BATCH_MAX_WAIT_MS", "200");
    set(&mut env, "LOG_FORMAT", "text");
    // No allowance for the first ctx.cache and ctx.storage calls: the worker opens their
    // TLS connections when it loads the plugin, not inside its first process_event.
    env
}

#[test]
fn the_pipeline_runs_over_tls_with_credentials_to_every_dependency() {
    let stack = TlsStack::start("pipeline");
    let mut env = pipeline_env(&stack, "tls_pipeline");
    ingest_ok(&["migrate"], &env);
    let team_out = ingest_ok(&["teams", "create", "--name", "tls"], &env);
    let team: i64 = team_out.split_whitespace().nth(2).and_then(|w| w.parse().ok()).expect("team id");
    let token = team_out.lines().last().unwrap().trim().to_string();
    let limited = ingest_ok(&["teams", "create", "--name", "limited"], &env).lines().last().unwrap().trim().to_string();
    let dir = plugin_dir();
    ingest_ok(&["plugins", "install", dir.to_str().unwrap(), "--team", &team.to_string()], &env);

    let prefix = env.iter().find(|(k, _)| k == "REDIS_KEY_PREFIX").unwrap().1.clone();
    redis_zadd(&stack, &format!("{prefix}quota-limits/events"), &limited);

    let ingest_address = format!("127.0.0.1:{}", free_port());
    let mut ingest_env = env.clone();
    set(&mut ingest_env, "ADDRESS", &ingest_address);
    let mut ingest = Process::start(
        "sluice-ingest",
        &ingest_env,
        std::env::temp_dir().join(format!("{}.log", unique("tls-ingest"))),
    );
    let capture_address = format!("127.0.0.1:{}", free_port());
    set(&mut env, "ADDRESS", &capture_address);
    set(&mut env, "TEAM_TOKEN_CHECK", "true");
    set(&mut env, "TEAM_TOKEN_REFRESH_INTERVAL_MS", "100");
    let mut capture =
        Process::start("sluice-capture", &env, std::env::temp_dir().join(format!("{}.log", unique("tls-capture"))));
    assert!(capture.wait_ready(&capture_address, Duration::from_secs(30)), "capture:\n{}", capture.log_text());
    assert!(ingest.wait_ready(&ingest_address, Duration::from_secs(60)), "ingest:\n{}", ingest.log_text());

    // The team list (Postgres over TLS) and the quota list (Redis over TLS) reach capture:
    // an unknown token is turned away, a limited one is accepted and dropped.
    let capture_url = format!("http://{capture_address}");
    let batch = |token: &str| json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]}).to_string();
    let start = Instant::now();
    loop {
        let unknown =
            http().post(format!("{capture_url}/batch")).body(batch("phc_nobody_has_this_token")).send().unwrap();
        let dropped = metric(&capture_address, "capture_events_dropped_total", "quota_limited");
        if unknown.status() == 401 && dropped > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "capture did not read Postgres and Redis:\n{}",
            capture.log_text()
        );
        let r = http().post(format!("{capture_url}/batch")).body(batch(&limited)).send().unwrap();
        assert_eq!(r.status(), 200);
        std::thread::sleep(Duration::from_millis(200));
    }

    // A real SDK's events through Kafka over SASL_SSL, the plugin worker's cache and
    // storage, and into ClickHouse over https.
    let run = unique("tls");
    let out = Sdk::Python.send_command(&capture_url, &token, &run, true).output().expect("posthog-python");
    assert!(out.status.success(), "SDK: {}\ncapture:\n{}", text(&out), capture.log_text());
    let query = format!(
        "SELECT event, distinct_id, properties FROM {}.events FINAL WHERE team_id = {team} FORMAT JSONEachRow",
        env.iter().find(|(k, _)| k == "CLICKHOUSE_DATABASE").unwrap().1
    );
    let start = Instant::now();
    let rows: Vec<Value> = loop {
        let rows: Vec<Value> = stack.clickhouse(&query).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if rows.len() >= 5 || start.elapsed() > Duration::from_secs(60) {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(rows.len(), 5, "the SDK's five events:\n{rows:?}\ningest:\n{}", ingest.log_text());
    let mut seen: Vec<i64> = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["properties"].as_str().unwrap()).unwrap()["seen"].as_i64().expect("seen")
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3, 4, 5], "the plugin counted in Redis over TLS");

    // Persons, in Postgres over TLS.
    let database_url = env.iter().find(|(k, _)| k == "DATABASE_URL").unwrap().1.clone();
    let ids: Vec<String> = sluice_tests::block_on(async {
        let pool = sqlx::PgPool::connect(&database_url).await.expect("postgres over TLS");
        // The quota-limited team's events sent before capture read its quota were taken:
        // only this team's persons are the SDK's.
        sqlx::query_scalar("SELECT distinct_id FROM person_distinct_ids WHERE team_id = $1 ORDER BY distinct_id")
            .bind(team)
            .fetch_all(&pool)
            .await
            .expect("person ids")
    });
    assert_eq!(ids, vec![format!("anon-{run}"), format!("user-{run}")]);

    for (name, process) in [("capture", &capture), ("ingest", &ingest)] {
        assert_no_secret(name, &process.log_text(), &stack);
    }
}

fn metric(address: &str, name: &str, cause: &str) -> f64 {
    let text = http().get(format!("http://{address}/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("cause=\"{cause}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A wrong password for each dependency in turn: the process says which one refused,
/// and prints none of the passwords, right or wrong.
#[test]
fn wrong_credentials_are_reported_without_the_credentials() {
    let stack = TlsStack::start("wrong");
    let env = pipeline_env(&stack, "tls_wrong");
    ingest_ok(&["migrate"], &env);
    let wrong = format!("wrong-{}", unique("pw"));
    let scan = |what: &str, output: &str| {
        assert_no_secret(what, output, &stack);
        assert!(!output.contains(&wrong), "{what} printed the wrong password:\n{output}");
    };

    // Postgres and ClickHouse: the operator command fails, naming the setting.
    let mut bad = env.clone();
    let url = env.iter().find(|(k, _)| k == "DATABASE_URL").unwrap().1.replace(&stack.postgres_password, &wrong);
    set(&mut bad, "DATABASE_URL", &url);
    let out = ingest(&["migrate"], &bad);
    assert!(!out.status.success());
    assert!(text(&out).contains("DATABASE_URL=postgres://sluice_pg:***@localhost"), "{}", text(&out));
    scan("migrate with a wrong Postgres password", &text(&out));

    let mut bad = env.clone();
    set(&mut bad, "CLICKHOUSE_PASSWORD", &wrong);
    let out = ingest(&["migrate"], &bad);
    assert!(!out.status.success());
    assert!(text(&out).contains("Wrong password"), "{}", text(&out));
    scan("migrate with a wrong ClickHouse password", &text(&out));

    // Kafka: capture never becomes ready and says why.
    let mut bad = env.clone();
    set(&mut bad, "KAFKA_SASL_PASSWORD", &wrong);
    let (mut capture, address) = Process::capture(&bad, "tls-wrong");
    assert!(!capture.wait_ready(&address, Duration::from_secs(8)), "ready with a wrong Kafka password");
    let log = capture.log_text();
    assert!(log.to_lowercase().contains("authentication"), "{log}");
    scan("capture with a wrong Kafka password", &log);
    drop(capture);

    // Redis: capture runs (quotas fail open, as documented) and says Redis refused it.
    let mut bad = env.clone();
    let url = env.iter().find(|(k, _)| k == "REDIS_URL").unwrap().1.replace(&stack.redis_password, &wrong);
    set(&mut bad, "REDIS_URL", &url);
    let (mut capture, address) = Process::capture(&bad, "tls-wrong");
    assert!(capture.wait_ready(&address, Duration::from_secs(30)), "{}", capture.log_text());
    capture.wait_for_log("redis lists cannot be read", Duration::from_secs(10));
    scan("capture with a wrong Redis password", &capture.log_text());
}

/// TLS without the CA the server's certificate chains to is refused: nothing falls
/// back to an unverified connection.
#[test]
fn servers_are_verified_against_the_configured_ca() {
    let stack = TlsStack::start("verify");
    let env = pipeline_env(&stack, "tls_verify");
    let out = ingest(&["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    // Without CLICKHOUSE_CA_FILE the run's CA is unknown: the public roots do not sign it.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "CLICKHOUSE_CA_FILE");
    let out = ingest(&["migrate"], &bad);
    assert!(!out.status.success(), "ClickHouse accepted without its CA");
    assert!(text(&out).contains("cannot reach ClickHouse"), "{}", text(&out));
    // Postgres: verify-full against another CA.
    let other_ca = std::env::temp_dir().join(unique("other-ca.pem"));
    std::fs::write(&other_ca, rcgen_ca()).unwrap();
    let mut bad = env.clone();
    let url = env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .unwrap()
        .1
        .replace(&format!("sslrootcert={}", stack.ca().display()), &format!("sslrootcert={}", other_ca.display()));
    set(&mut bad, "DATABASE_URL", &url);
    let out = ingest(&["migrate"], &bad);
    assert!(!out.status.success(), "Postgres accepted under another CA");
    assert!(text(&out).contains("cannot connect to Postgres"), "{}", text(&out));

    // Kafka: without its CA, capture is never ready and logs the refusal as an error.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "KAFKA_SSL_CA_LOCATION");
    let (mut capture, address) = Process::capture(&bad, "tls-ca");
    assert!(!capture.wait_ready(&address, Duration::from_secs(8)), "ready without the broker's CA");
    assert!(capture.log_text().contains("kafka refused the connection"), "{}", capture.log_text());
    drop(capture);

    // Redis: without its CA, the lists cannot be read, and capture says so.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "REDIS_TLS_CA_FILE");
    let (mut capture, address) = Process::capture(&bad, "tls-ca");
    assert!(capture.wait_ready(&address, Duration::from_secs(30)), "{}", capture.log_text());
    capture.wait_for_log("redis lists cannot be read", Duration::from_secs(10));
}

fn rcgen_ca() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

/// Settings that cannot all be honoured stop either binary at start-up, naming the
/// setting; none is quietly ignored.
#[test]
fn settings_that_cannot_be_honoured_stop_the_process() {
    let missing = "/nonexistent/ca.pem";
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("REDIS_TLS_CA_FILE", missing)],
            "REDIS_TLS_CA_FILE is set but REDIS_URL=redis://127.0.0.1:6379 does not use TLS",
        ),
        (
            vec![("REDIS_URL", "rediss://127.0.0.1:6390"), ("REDIS_TLS_CA_FILE", missing)],
            "REDIS_TLS_CA_FILE=/nonexistent/ca.pem",
        ),
        (
            vec![("KAFKA_SSL_CA_LOCATION", missing)],
            "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL=plaintext",
        ),
        (vec![("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")], "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_MECHANISM"),
        (vec![("KAFKA_PRODUCER_ACKS", "1")], "KAFKA_PRODUCER_ACKS would set acks"),
        (
            vec![(
                "DATABASE_URL",
                "postgres://u:pw@127.0.0.1/sluice?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            )],
            "sslrootcert=/nonexistent/ca.pem",
        ),
        (vec![("DATABASE_URL_FILE", "/nonexistent/database-url")], "DATABASE_URL_FILE=/nonexistent/database-url"),
    ];
    for (vars, expected) in &cases {
        for bin in ["sluice-capture", "sluice-ingest"] {
            let mut env: Vec<(&str, &str)> = vec![("ADDRESS", "127.0.0.1:0"), ("TEAM_TOKEN_CHECK", "true")];
            env.extend(vars.iter().copied());
            let child = Command::new(bin_path(bin))
                .env_remove("DATABASE_URL")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start");
            let out = wait_with_timeout(child, Duration::from_secs(20));
            assert!(!out.status.success(), "{bin} {vars:?} kept running or succeeded:\n{}", text(&out));
            assert!(text(&out).contains(expected), "{bin} {vars:?}: expected {expected:?} in:\n{}", text(&out));
        }
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}
