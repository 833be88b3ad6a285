//! Plugins' jobs through the real pipeline: started from a schedule with `ctx.jobs`,
//! kept in Postgres, claimed by one of two ingest processes at a time, run at least once
//! through a `kill -9` of each process in turn, and a failing job retried, then kept as
//! failed with its error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::plugins::{install, plugin_dir, Database};
use sluice_tests::receiver::{Answer, Receiver};
use sluice_tests::{unique, Capture, Ingest};

const FANOUT: &str = r#"
local plugin = {jobs = {}}

function plugin.every_minute(ctx, info)
    if ctx.storage.get("started") then
        return
    end
    ctx.storage.set("started", true)
    for i = 1, 30 do
        ctx.jobs.send({n = i}):run_now()
    end
    ctx.jobs.broken({n = 0}):run_in(0)
end

function plugin.jobs.send(payload, ctx)
    local r = ctx.http.fetch(ctx.config.url, {method = "POST", body = tostring(payload.n)})
    if r.status ~= 200 then
        error("receiver answered " .. r.status)
    end
end

function plugin.jobs.broken(payload, ctx)
    error("always fails")
end

return plugin
"#;

#[test]
fn jobs_run_once_each_across_two_processes_and_survive_kill_9_of_each() {
    let db = Database::create("plugin_jobs");
    db.run(&["migrate"]);
    let (team, _) = db.team("jobs");
    let receiver = Receiver::answering(|_| Answer::Status(200), Duration::from_millis(400));
    let manifest = json!({"name": "fanout", "config": [{"key": "url", "type": "string", "required": true}],
                          "http": {"allow": ["$config:url"]}, "schedule": ["every_minute"]});
    let id = install(
        &db,
        &plugin_dir("fanout", manifest, FANOUT),
        team,
        &["--config", &format!("url={}", receiver.url("/job"))],
    );

    let cap = Capture::start("plugin-jobs", &[]);
    let prefix = format!("{}/", unique("jobs"));
    let mut env = db.env();
    env.extend([
        ("PLUGIN_HTTP_ALLOW_PRIVATE", "true"),
        ("PLUGIN_SCHEDULE_MINUTE_MS", "1000"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("PLUGIN_JOB_POLL_MS", "200"),
        ("PLUGIN_JOB_CONCURRENCY", "2"),
        ("PLUGIN_JOB_MAX_ATTEMPTS", "2"),
        ("PLUGIN_JOB_RETRY_BACKOFF_MS", "200"),
        ("PLUGIN_HOOK_TIMEOUT_MS", "2000"),
        ("PLUGIN_HOOK_IO_MS", "2000"),
    ]);
    let mut first = Ingest::start("plugin_jobs", &cap.topics.main, &env);
    let mut second = first.member("second");
    let log = |a: &Ingest, b: &Ingest| format!("{}\n----\n{}", a.log_text(), b.log_text());

    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.bodies().len() < 5 {
        assert!(Instant::now() < deadline, "no jobs ran\n{}", log(&first, &second));
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill_and_restart();
    // Then the other one: every process has been restarted under the jobs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.bodies().len() < 12 {
        assert!(Instant::now() < deadline, "jobs stopped after the first kill\n{}", log(&first, &second));
        std::thread::sleep(Duration::from_millis(50));
    }
    second.kill_and_restart();

    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for body in receiver.bodies() {
            *counts.entry(body).or_default() += 1;
        }
        if counts.len() == 30 {
            break counts;
        }
        assert!(Instant::now() < deadline, "{} of 30 jobs ran: {counts:?}\n{}", counts.len(), log(&first, &second));
        std::thread::sleep(Duration::from_millis(200));
    };
    let again: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(again.len() <= 4, "only jobs in flight at a kill may run twice: {again:?}");
    assert!((1..=30).all(|n| counts.contains_key(&n.to_string())));

    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = db.run(&["plugins", "jobs", "--plugin-config", &id.to_string()]);
        if listed.contains("failed") && !listed.contains("\tsend\t") {
            break listed;
        }
        assert!(Instant::now() < deadline, "{listed}\n{}", log(&first, &second));
        std::thread::sleep(Duration::from_millis(300));
    };
    let line = listed.lines().find(|l| l.contains("\tbroken\t")).expect("the failed job is listed");
    assert!(line.contains("failed") && line.contains("attempts=2") && line.contains("always fails"), "{line}");
    let job: i64 = line.split('\t').next().unwrap().parse().unwrap();
    assert!(db.run(&["plugins", "retry-job", &job.to_string()]).contains("will run again"));
    let metrics = format!("{}{}", first.metrics(), second.metrics());
    assert!(metrics.contains("ingest_plugin_jobs_total{outcome=\"done\"}"), "{metrics}");
}
