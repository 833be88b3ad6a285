//! What capture tells SDKs on load, and the v1 batch, through the running binary: each
//! team's settings from Postgres (changed by `sluice-ingest teams configure` and picked up
//! without a restart), unknown tokens answered as PostHog answers them, older SDKs'
//! `/decide` bodies read as their events are, a token over its recordings quota told not
//! to record, the defaults while the settings cannot be read, and the v1 endpoint's
//! per-event answers and refusals.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::{base64, create_team, gzip, http, ingest_command, redis_zadd, unique, Capture};

fn wait_config(cap: &Capture, token: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let config = cap.get(&format!("/array/{token}/config")).json();
        if until(&config) {
            return config;
        }
        assert!(Instant::now() < deadline, "capture never answered as expected: {config}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn each_team_gets_its_settings_and_a_change_is_picked_up_without_a_restart() {
    let recorded = create_team(&unique("sdk recorded"));
    let plain = create_team(&unique("sdk plain"));
    ingest_command(
        &[
            "teams",
            "configure",
            "--token",
            &recorded,
            "--session-recording",
            "true",
            "--recording-sample-rate",
            "0.25",
            "--console-logs",
            "true",
        ],
        &[],
    );
    let cap = Capture::start("sdk-config", &[("SDK_CONFIG_REFRESH_INTERVAL_MS", "300")]);

    let config = wait_config(&cap, &recorded, |c| c["sessionRecording"].is_object());
    assert_eq!(config["token"], recorded.as_str());
    assert_eq!(config["sessionRecording"]["endpoint"], "/s/");
    assert_eq!(config["sessionRecording"]["sampleRate"], "0.25");
    assert_eq!(config["sessionRecording"]["consoleLogRecordingEnabled"], true);
    assert_eq!(config["hasFeatureFlags"], false);
    assert_eq!(config["supportedCompression"], json!(["gzip", "gzip-js"]));
    assert_eq!(config["analytics"]["endpoint"], "/i/v0/e/");
    assert_eq!(config["autocapture_opt_out"], false);
    let other = cap.get(&format!("/array/{plain}/config")).json();
    assert_eq!(other["sessionRecording"], false, "another team's settings are its own");

    // The script form carries the same config, where posthog-js looks for it.
    let script = cap.get(&format!("/array/{recorded}/config.js"));
    assert_eq!(script.status, 200);
    assert_eq!(script.headers["content-type"], "application/javascript");
    assert!(script.text.contains(&format!("window._POSTHOG_REMOTE_CONFIG[\"{recorded}\"]")), "{}", script.text);

    // A change by the operator command reaches the SDK within the refresh interval.
    ingest_command(&["teams", "configure", "--token", &plain, "--autocapture", "false", "--heatmaps", "true"], &[]);
    let changed = wait_config(&cap, &plain, |c| c["autocapture_opt_out"] == true);
    assert_eq!(changed["heatmaps"], true);

    // A cross-origin page reads the JSON form (credentials included, so the origin is
    // echoed, never `*`).
    let r = http()
        .get(format!("{}/array/{recorded}/config", cap.url))
        .header("origin", "https://shop.example")
        .send()
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");

    assert!(cap.metric("capture_sdk_config_requests_total", "endpoint=\"config\",outcome=\"team\"") >= 2.0);
}

#[test]
fn unknown_tokens_older_sdks_and_the_recordings_quota_are_answered_as_posthog_does() {
    let token = create_team(&unique("sdk flags"));
    ingest_command(&["teams", "configure", "--token", &token, "--session-recording", "true"], &[]);
    let limited = create_team(&unique("sdk limited"));
    ingest_command(&["teams", "configure", "--token", &limited, "--session-recording", "true"], &[]);
    let cap = Capture::start("sdk-flags", &[("SDK_CONFIG_REFRESH_INTERVAL_MS", "300")]);
    wait_config(&cap, &token, |c| c["sessionRecording"].is_object());

    // Unknown: 404 for the config, 401 for the flag endpoints, each with a JSON reason.
    let missing = cap.get("/array/phc_nobodyhasthistoken/config");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "invalid_api_key");
    let flags =
        cap.post("/flags/?v=2", "application/json", json!({"token": "phc_nobody", "distinct_id": "d"}).to_string());
    assert_eq!(flags.status, 401);
    assert_eq!(flags.json()["type"], "authentication_error");
    let none = cap.post("/flags?v=2", "application/json", json!({"distinct_id": "d"}).to_string());
    assert_eq!((none.status, none.json()["code"].clone()), (401, json!("missing_api_key")));

    // Today's SDK: no flag, ever; the config merged in when asked for.
    let body = json!({"token": token, "distinct_id": "d", "groups": {}}).to_string();
    let flags = cap.post("/flags/?v=2&config=true", "application/json", gzip(body.as_bytes())).json();
    assert_eq!(flags["flags"], json!({}));
    assert_eq!(flags["featureFlags"], json!({}));
    assert_eq!(flags["errorsWhileComputingFlags"], false);
    assert_eq!(flags["sessionRecording"]["endpoint"], "/s/");

    // An older SDK's /decide: a form with base64 `data`, the config's fields at the top.
    let form =
        format!("data={}", urlencode(&base64(json!({"token": token, "distinct_id": "d"}).to_string().as_bytes())));
    let decide = cap.post("/decide/?v=3", "application/x-www-form-urlencoded", form);
    assert_eq!(decide.status, 200, "{}", decide.text);
    let decide = decide.json();
    assert_eq!(decide["featureFlags"], json!({}));
    assert_eq!(decide["sessionRecording"]["endpoint"], "/s/");
    assert_eq!(decide["supportedCompression"], json!(["gzip", "gzip-js"]));
    assert_eq!(decide["config"]["enable_collect_everything"], true);
    let v1 = cap.get(&format!("/decide/?v=1&token={token}")).json();
    assert_eq!(v1["featureFlags"], json!([]), "a list before v2");
    let broken = cap.post("/decide/?v=3", "application/json", "{not json");
    assert_eq!(broken.status, 400, "{}", broken.text);

    // Over the recordings quota: told not to record.
    redis_zadd(&format!("{}quota-limits/recordings", cap.redis_prefix), &limited, 3600);
    let config = wait_config(&cap, &limited, |c| c["sessionRecording"] == false);
    assert_eq!(config["quotaLimited"], json!(["recordings"]));
}

#[test]
fn a_team_created_after_the_last_read_is_served_at_once_and_unknown_tokens_are_bounded() {
    // A read every ten minutes: only the lookup can know a team made after the first.
    let cap = Capture::start("sdk-new-team", &[("SDK_CONFIG_REFRESH_INTERVAL_MS", "600000")]);
    let before = create_team(&unique("sdk before"));
    wait_config(&cap, &before, |c| c["token"] == before.as_str());
    let token = create_team(&unique("sdk new"));
    let config = cap.get(&format!("/array/{token}/config"));
    assert_eq!(config.status, 200, "{}", config.text);
    assert_eq!(config.json()["token"], token.as_str());
    let flags = cap.post("/flags?v=2", "application/json", json!({"token": token, "distinct_id": "d"}).to_string());
    assert_eq!(flags.status, 200, "{}", flags.text);
    let decide = cap.get(&format!("/decide/?v=3&token={token}"));
    assert_eq!(decide.status, 200, "{}", decide.text);

    // The same unknown token, many times at once: refused each time, asked of Postgres once.
    let random = unique("phc_random");
    let answers: Vec<u16> = (0..50)
        .map(|_| {
            let url = format!("{}/array/{random}/config", cap.url);
            std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(answers.iter().all(|s| *s == 404), "{answers:?}");
    let asked = cap.metric("capture_sdk_config_lookups_total", "outcome=\"unknown\"");
    let cached = cap.metric("capture_sdk_config_lookups_total", "outcome=\"cached_unknown\"");
    let busy = cap.metric("capture_sdk_config_lookups_total", "outcome=\"busy\"");
    assert!(asked <= 4.0, "{asked} queries for one unknown token (SDK_CONFIG_LOOKUP_CONCURRENCY is 4)");
    assert!(asked + cached + busy >= 50.0, "{asked} + {cached} + {busy}");
}

#[test]
fn while_the_settings_cannot_be_read_every_token_gets_the_defaults() {
    let cap = Capture::start(
        "sdk-defaults",
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:9/sluice"), ("SDK_CONFIG_REFRESH_INTERVAL_MS", "300")],
    );
    let config = cap.get("/array/phc_anytokenatall/config");
    assert_eq!(config.status, 200);
    assert_eq!(config.json()["sessionRecording"], false);
    assert_eq!(config.json()["token"], "phc_anytokenatall");
    assert!(cap.metric("capture_sdk_config_requests_total", "endpoint=\"config\",outcome=\"defaults\"") >= 1.0);
    // Events are taken as ever: capture needs no database on the request path.
    let r = cap.post(
        "/i/v0/e/",
        "application/json",
        json!({"event": "e", "distinct_id": "d", "api_key": "phc_x"}).to_string(),
    );
    assert_eq!(r.status, 200);
    // Told once, when the first read fails (after the pool's connect timeout).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cap.log_text().contains("team settings for the SDK config cannot be read") {
        assert!(Instant::now() < deadline, "the failing read is logged:\n{}", cap.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_v1_batch_answers_per_event_and_refuses_what_it_cannot_read() {
    let cap = Capture::start("sdk-v1", &[]);
    let post = |headers: &[(&str, &str)], body: Vec<u8>| {
        let mut request = http().post(format!("{}/i/v1/analytics/events", cap.url));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let r = request.body(body).send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let good = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let bad = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c";
    let body = json!({"created_at": "2026-11-30T10:00:00Z", "batch": [
        {"event": "v1 event", "uuid": good, "distinct_id": "v1-user", "timestamp": "2026-11-30T09:59:59Z",
         "session_id": "s1", "properties": {"k": "v"}},
        {"event": "v1 event", "uuid": bad, "distinct_id": "", "timestamp": "2026-11-30T09:59:59Z"},
    ]})
    .to_string();
    let auth = [
        ("authorization", "Bearer phc_v1test"),
        ("posthog-sdk-info", "posthog-go/1.2.3"),
        ("content-encoding", "gzip"),
    ];
    let (status, answer) = post(&auth, gzip(body.as_bytes()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][good]["result"], "ok");
    assert_eq!(answer["results"][bad], json!({"result": "drop", "details": "missing_distinct_id"}));
    let records = cap.read(&cap.topics.main, 1);
    assert_eq!(records.len(), 1);
    let data = records[0].data();
    assert_eq!(data["properties"]["$session_id"], "s1");
    assert_eq!(data["properties"]["$lib"], "posthog-go");
    assert_eq!(records[0].value["token"], "phc_v1test");

    let (status, answer) = post(&[], body.clone().into_bytes());
    assert_eq!((status, answer["code"].clone()), (401, json!("missing_api_key")));
    let (status, answer) = post(&[("authorization", "Bearer phc_v1test")], b"{\"batch\": []}".to_vec());
    assert_eq!((status, answer["code"].clone()), (400, json!("invalid_payload_shape")));
    let (status, answer) =
        post(&[("authorization", "Bearer phc_v1test"), ("content-encoding", "deflate")], b"not zlib".to_vec());
    assert_eq!((status, answer["code"].clone()), (400, json!("invalid_deflate")));
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
