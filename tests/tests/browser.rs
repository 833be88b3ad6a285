//! posthog-js, the SDK most users have, in a real browser: Debian's Chromium driven by
//! puppeteer-core (`tests/browser/run.mjs`) visits a page on an origin of its own that
//! loads posthog-js from npm, against capture and ingest.
//!
//! Each run checks the whole path: the SDK fetches its config from capture
//! (`/array/<token>/config.js`) and only then records the session and compresses what it
//! sends; the $pageview, an autocapture click on a nested element, identify with $set, a
//! custom event and the $pageleave sent by sendBeacon arrive on the main topic with their
//! properties; the recording (a full snapshot and incremental ones) arrives on the replay
//! topic under the page's session and window ids; and ingest writes the rows, with the
//! click's `elements_chain` filled and the person identified.
//!
//! Two runs at once: the config offering gzip-js and the elements as the chain, and
//! offering only base64 and the older `$elements` list (which posthog-js sends beside the
//! chain); that click, sent again without its chain as SDKs in the field send it, is
//! stored with the chain the SDK built, byte for byte.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{
    clickhouse_rows, create_team, ingest_command, postgres, read_topic, repo_root, unique, wait_for_rows, Capture,
    Ingest, Record,
};

struct Visit {
    token: String,
    distinct_id: String,
    session_id: String,
    origin: String,
    sdk_version: String,
    requests: Vec<Value>,
    beacons: Vec<String>,
    events: Vec<Record>,
    recordings: Vec<Record>,
    ingest: Ingest,
    capture: Capture,
}

fn visit(mode: &str, compression: &str, chain_as_string: bool) -> Visit {
    let token = create_team(&unique(&format!("browser {mode}")));
    let out = ingest_command(
        &[
            "teams",
            "configure",
            "--token",
            &token,
            "--session-recording",
            "true",
            "--elements-chain-as-string",
            &chain_as_string.to_string(),
        ],
        &[],
    );
    assert!(out.contains("session recording on"), "{out}");
    let capture = Capture::start(
        &format!("browser-{mode}"),
        &[("SDK_CONFIG_SUPPORTED_COMPRESSION", compression), ("SDK_CONFIG_REFRESH_INTERVAL_MS", "500")],
    );
    // The settings are read in the background: wait until capture answers with them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let config = capture.get(&format!("/array/{token}/config")).json();
        if config["sessionRecording"]["endpoint"] == "/s/" {
            break;
        }
        assert!(Instant::now() < deadline, "capture never served the team's config: {config}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ingest = Ingest::start(&format!("browser_{mode}"), &capture.topics.main, &[]);

    let distinct_id = unique(&format!("browser-user-{mode}"));
    let artifacts = repo_root().join("tests/browser/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let screenshot = artifacts.join(format!("{mode}.png"));
    let run = Command::new("node")
        .arg(repo_root().join("tests/browser/run.mjs"))
        .args([&capture.url, &token, &distinct_id, &screenshot.to_string_lossy().to_string()])
        .output()
        .expect("node runs tests/browser/run.mjs (npm install in tests/browser, Debian's chromium)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the browser run failed: {}\n{stdout}\n{}\ncapture log:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        capture.log_text()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the run's report");
    eprintln!("browser {mode}: screenshot at {}", screenshot.display());
    assert_eq!(report["errors"], serde_json::json!([]), "no error in the page's console");

    let events = read_topic(&capture.kafka, &capture.topics.main, 5, Duration::from_secs(30));
    let recordings = read_topic(&capture.kafka, &capture.topics.replay, 1, Duration::from_secs(30));
    Visit {
        token,
        distinct_id,
        session_id: report["sessionId"].as_str().expect("session id").to_string(),
        origin: report["origin"].as_str().unwrap().to_string(),
        sdk_version: report["sdkVersion"].as_str().unwrap().to_string(),
        requests: report["requests"].as_array().unwrap().clone(),
        beacons: report["beacons"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect(),
        events,
        recordings,
        ingest,
        capture,
    }
}

impl Visit {
    /// The event as the SDK sent it, with the distinct id capture read from it.
    fn event(&self, name: &str) -> Value {
        let record = self
            .events
            .iter()
            .find(|r| r.value["event"] == name)
            .unwrap_or_else(|| panic!("no {name} on the main topic: {:?}", self.names()));
        let mut data = record.data();
        data["distinct_id"] = record.value["distinct_id"].clone();
        data
    }

    fn names(&self) -> Vec<String> {
        self.events.iter().map(|r| r.data()["event"].as_str().unwrap_or_default().to_string()).collect()
    }

    fn requests_to(&self, path: &str) -> Vec<&Value> {
        self.requests.iter().filter(|r| r["url"].as_str().is_some_and(|u| u.contains(path))).collect()
    }

    /// What every run checks, whatever the compression.
    fn check_common(&self) {
        let config = self.requests_to(&format!("/array/{}/config.js", self.token));
        assert!(
            config.iter().any(|r| r["status"] == 200 && r["type"] == "script"),
            "the SDK loaded its config script from capture: {:?}",
            self.requests
        );
        assert!(self.requests_to("/static/").is_empty(), "nothing asked capture for SDK scripts: {:?}", self.requests);

        let pageview = self.event("$pageview");
        let p = &pageview["properties"];
        assert!(p["$current_url"].as_str().unwrap().starts_with(&self.origin), "{p}");
        assert_eq!(p["$session_id"], self.session_id.as_str());
        assert_eq!(p["$lib"], "web");
        assert_eq!(p["$lib_version"], self.sdk_version.as_str());
        let window_id = p["$window_id"].as_str().expect("a window id").to_string();

        let click = self.event("$autocapture");
        assert_eq!(click["properties"]["$event_type"], "click");
        let identify = self.event("$identify");
        assert_eq!(identify["distinct_id"], self.distinct_id.as_str());
        // posthog-js sends $set beside the properties; ingest merges it in.
        assert_eq!(identify["$set"]["email"], "ada@example.com", "{identify}");
        assert!(identify["properties"]["$anon_distinct_id"].is_string());
        let custom = self.event("checkout started");
        assert_eq!(custom["properties"]["cart_value"], 42);
        assert_eq!(custom["distinct_id"], self.distinct_id.as_str());
        // Every event but the $pageleave was sent by the queue's timer before the page
        // left; the $pageleave went in the beacon the SDK sent as the page unloaded.
        self.event("$pageleave");
        assert!(
            self.beacons
                .iter()
                .any(|b| b.starts_with(&format!("{}/i/v0/e/", self.capture.url)) && b.ends_with(" true")),
            "the page sent its last events by sendBeacon as it unloaded: {:?}",
            self.beacons
        );

        // The recording, under the page's session and window.
        let mut types = std::collections::BTreeSet::new();
        for r in &self.recordings {
            let data = r.data();
            assert_eq!(data["event"], "$snapshot_items");
            assert_eq!(data["properties"]["$session_id"], self.session_id.as_str());
            assert_eq!(data["properties"]["$window_id"], window_id.as_str());
            assert_eq!(r.key.as_deref(), Some(self.session_id.as_str()), "keyed by the session");
            for item in data["properties"]["$snapshot_items"].as_array().expect("items") {
                types.insert(item["type"].as_i64().unwrap_or(-1));
            }
        }
        assert!(types.contains(&2) && types.contains(&3), "a full snapshot and incremental ones: {types:?}");
        assert!(self.requests_to("/s/").iter().any(|r| r["method"] == "POST"), "recordings sent to /s/");

        // Through ingest: the rows, and the person identified with what was $set.
        let table = self.ingest.table("events");
        let rows = wait_for_rows(
            &format!(
                "SELECT event, distinct_id, elements_chain FROM {table} WHERE event IN \
                 ('$pageview', '$autocapture', '$identify', 'checkout started', '$pageleave')"
            ),
            5,
            Duration::from_secs(60),
        );
        assert!(rows.len() >= 5, "{rows:?}");
        let (token, distinct_id) = (self.token.clone(), self.distinct_id.clone());
        let identified: Vec<(bool, Value)> = postgres(|db| {
            Box::pin(async move {
                sqlx::query_as::<_, (bool, Value)>(
                    "SELECT p.is_identified, p.properties FROM persons p \
                     JOIN person_distinct_ids d ON d.person_id = p.id JOIN teams t ON t.id = p.team_id \
                     WHERE t.api_token = $1 AND d.distinct_id = $2",
                )
                .bind(token)
                .bind(distinct_id)
                .fetch_all(db)
                .await
                .expect("persons query")
            })
        });
        assert_eq!(identified.len(), 1, "one person for the identified user");
        assert!(identified[0].0, "identified");
        assert_eq!(identified[0].1["email"], "ada@example.com");
    }

    fn stored_chain(&self) -> String {
        let table = self.ingest.table("events");
        let rows = wait_for_rows(
            &format!("SELECT elements_chain FROM {table} WHERE event = '$autocapture'"),
            1,
            Duration::from_secs(60),
        );
        rows[0]["elements_chain"].as_str().unwrap().to_string()
    }
}

#[test]
fn posthog_js_in_chromium_with_both_compressions_and_both_element_forms() {
    let (gzip, base64) = std::thread::scope(|s| {
        let gzip = s.spawn(|| visit("gzip", "gzip,gzip-js", true));
        let base64 = s.spawn(|| visit("base64", "base64", false));
        (gzip.join().expect("gzip run"), base64.join().expect("base64 run"))
    });
    gzip.check_common();
    base64.check_common();

    // gzip-js offered: events are gzipped (posthog-js says so only in the body's magic
    // number now, which capture sniffs: every body on the route decompressed to more than
    // one and a half times its size), and the SDK builds the chain itself.
    let sent = gzip.requests_to("/i/v0/e/");
    assert!(!sent.is_empty(), "events go to the endpoint the config names: {:?}", gzip.requests);
    assert!(sent.iter().all(|r| !r["url"].as_str().unwrap().contains("compression=base64")), "{sent:?}");
    let ratios = gzip.capture.metric("capture_decompression_ratio_count", "route=\"events\"");
    let uncompressed = gzip.capture.metric("capture_decompression_ratio_bucket", "route=\"events\",le=\"1.5\"");
    assert!(ratios >= 1.0 && uncompressed == 0.0, "{ratios} bodies, {uncompressed} not compressed");
    let click = gzip.event("$autocapture");
    let sdk_chain = click["properties"]["$elements_chain"].as_str().expect("the SDK sent the chain").to_string();
    assert!(sdk_chain.contains("button.btn.primary") && sdk_chain.contains("attr__id=\"buy\""), "{sdk_chain}");
    assert_eq!(gzip.stored_chain(), sdk_chain, "stored in the column as sent");
    let props = clickhouse_rows(&format!(
        "SELECT properties FROM {} WHERE event = '$autocapture'",
        gzip.ingest.table("events")
    ));
    assert!(!props[0]["properties"].as_str().unwrap().contains("$elements_chain"), "and not left in the properties");

    // Only base64 offered: events are base64. The team asks for the older `$elements`
    // list, which posthog-js sends beside the chain; SDKs of the field that send only the
    // list are this click without its chain: sent through capture and ingest so, it is
    // stored with the chain the SDK built, byte for byte.
    let sent = base64.requests_to("/i/v0/e/");
    assert!(!sent.is_empty(), "events go to the endpoint the config names: {:?}", base64.requests);
    assert!(sent.iter().all(|r| r["url"].as_str().unwrap().contains("compression=base64")), "{sent:?}");
    let click = base64.event("$autocapture");
    let elements = click["properties"]["$elements"].as_array().expect("the SDK sent the $elements list");
    assert_eq!(elements[0]["tag_name"], "span", "the clicked element first: {elements:?}");
    let chain = click["properties"]["$elements_chain"].as_str().expect("and its chain").to_string();
    assert_eq!(chain, sdk_chain, "the same click gives the same chain in both runs");
    let mut listed = click.clone();
    listed["properties"].as_object_mut().unwrap().remove("$elements_chain");
    let uuid = uuid::Uuid::new_v4().to_string();
    listed["uuid"] = Value::String(uuid.clone());
    let response = sluice_tests::http()
        .post(format!("{}/batch", base64.capture.url))
        .header("content-type", "application/json")
        .body(serde_json::json!({"api_key": base64.token, "batch": [listed]}).to_string())
        .send()
        .expect("capture answers");
    assert_eq!(response.status(), 200);
    let rows = wait_for_rows(
        &format!("SELECT elements_chain, properties FROM {} WHERE uuid = '{uuid}'", base64.ingest.table("events")),
        1,
        Duration::from_secs(60),
    );
    assert_eq!(rows.len(), 1, "the list-only click was written");
    assert_eq!(rows[0]["elements_chain"], sdk_chain.as_str(), "ingest builds from $elements the SDK's chain");
    assert!(!rows[0]["properties"].as_str().unwrap().contains("$elements"), "the list leaves the properties");
}
