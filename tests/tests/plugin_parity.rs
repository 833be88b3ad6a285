//! A hostile plugin fails on an author's machine as it fails in production: the same
//! plugin, run by `sluice-plugin run` and installed in a real ingest, is stopped by the
//! same limit with the same words (measured figures and ids aside), so an author sees
//! locally what production will do.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::plugins::{install, plugin_dir, Database};
use sluice_tests::{clickhouse_rows, unique, wait_for_rows, Capture, Ingest};

/// One operator setting for both: in `process_event` awaited I/O counts against the time
/// limit, and 280 writes to a real Redis take longer than the default 50 ms where the
/// author's in-memory store does not; the author sets what the operator set.
const SETTINGS: [(&str, &str); 1] = [("PLUGIN_PROCESS_EVENT_TIMEOUT_MS", "2000")];

/// Each plugin breaks one limit in `process_event`.
const HOSTILE: &[(&str, &str)] = &[
    // Past the store quota (16 MiB per plugin configuration) in values under the size limit.
    (
        "store-flood",
        r#"return { process_event = function(e, ctx)
            for i = 1, 400 do ctx.cache.set("k" .. i, string.rep("x", 60000)) end
            return e
        end }"#,
    ),
    // One C call that reaches no interrupt for seconds: only the watchdog ends it.
    (
        "quadratic-find",
        r#"return { process_event = function(e)
            local s = string.rep("a", 2000000)
            string.find(s, string.rep("a", 1000000) .. "b", 1, true)
            return e
        end }"#,
    ),
    // A loop: the interrupt stops it at its tick budget.
    ("busy-loop", r#"return { process_event = function(e) local n = 0 while true do n = n + 1 end end }"#),
    // Past the VM's heap.
    (
        "heap",
        r#"return { process_event = function(e)
            local t = {} for i = 1, 10000000 do t[i] = string.rep("y", 64) .. i end return e
        end }"#,
    ),
];

/// Figures and ids vary between runs and processes; the words must not.
fn words(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// What `sluice-plugin run` says about one event through the plugin.
fn author_tool(dir: &std::path::Path) -> String {
    let event = std::env::temp_dir().join(format!("{}.json", unique("parity-event")));
    std::fs::write(&event, json!({"uuid": "u", "team_id": 1, "event": "e", "properties": {}}).to_string()).unwrap();
    let out = Command::new(sluice_tests::bin_path("sluice-plugin"))
        .args(["run", dir.to_str().unwrap(), "--event", event.to_str().unwrap()])
        .envs(SETTINGS)
        .output()
        .expect("sluice-plugin runs");
    assert!(!out.status.success(), "the hostile plugin passed locally: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The error is the rest of the output, its traceback included.
    let at = stderr.find("error: ").unwrap_or_else(|| panic!("no error in {stderr}"));
    stderr[at + "error: ".len()..].trim().to_string()
}

#[test]
fn a_hostile_plugin_fails_the_same_way_locally_and_in_ingest() {
    let db = Database::create("plugin_parity");
    db.run(&["migrate"]);
    let (team, token) = db.team("parity");
    let mut installed = Vec::new();
    for (name, main) in HOSTILE {
        let dir = plugin_dir(name, json!({"name": name}), main);
        let id = install(&db, &dir, team, &[]);
        installed.push((name, dir, id));
    }
    let cap = Capture::start("plugin-parity", &[]);
    let mut env = db.env();
    env.push(("PLUGIN_WORKERS", "1"));
    env.extend(SETTINGS);
    let ingest = Ingest::start("plugin_parity", &cap.topics.main, &env);
    let body = json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);
    wait_for_rows(&format!("SELECT uuid FROM {} FINAL", ingest.table("events")), 1, Duration::from_secs(90));

    for (name, dir, id) in &installed {
        let local = author_tool(dir);
        let query = format!(
            "SELECT message FROM {} WHERE plugin_config_id = {id} AND level = 'error'",
            ingest.table("plugin_log_entries")
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let production = loop {
            if let Some(row) = clickhouse_rows(&query).into_iter().next() {
                break row["message"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "{name}: no error logged in production\n{}", ingest.log_text());
            std::thread::sleep(Duration::from_millis(200));
        };
        println!("{name}\n  local:      {local}\n  production: {production}");
        assert_eq!(words(&local), words(&production), "{name}: the author tool and production disagree");
    }
    // The watchdog's strike names the hook, the limit and the time it ran, in the metric too.
    let quadratic = installed.iter().find(|(n, _, _)| **n == "quadratic-find").map(|(_, _, id)| *id).unwrap();
    let metrics = ingest.metrics();
    let strike =
        format!("ingest_plugin_errors_total{{plugin_config=\"{quadratic}\",kind=\"watchdog\",hook=\"process_event\"}}");
    assert!(metrics.contains(&strike), "{strike} missing:\n{metrics}");
    let heap = installed.iter().find(|(n, _, _)| **n == "heap").map(|(_, _, id)| *id).unwrap();
    assert!(metrics.contains(&format!("plugin_config=\"{heap}\",kind=\"memory\"")), "{metrics}");
}
