//! Every route and body style through a real capture into the real broker: the message
//! that lands (topic, key, headers, every field), and the error answers.

use serde_json::{json, Value};
use sluice_tests::{base64, gzip, unique, Capture, Record};

/// Checks every field of a main-topic message against what the client sent.
fn assert_message(rec: &Record, token: &str, distinct_id: &str, event: &str) {
    let v = &rec.value;
    assert_eq!(rec.key.as_deref(), Some(format!("{token}:{distinct_id}").as_str()), "key of {v}");
    assert_eq!(v["token"], token);
    assert_eq!(v["distinct_id"], distinct_id);
    assert_eq!(v["event"], event);
    assert_eq!(v["ip"], "127.0.0.1");
    let uuid = v["uuid"].as_str().expect("uuid");
    uuid::Uuid::parse_str(uuid).expect("uuid parses");
    let now = v["now"].as_str().expect("now");
    assert!(now.ends_with('Z') && now.contains('T'), "now is RFC 3339 UTC: {now}");
    let data = rec.data();
    assert_eq!(data["uuid"], uuid, "the uuid used is written into data");
    assert_eq!(data["event"], event);
    assert!(data["properties"].is_object());
    for (h, expected) in
        [("token", token), ("distinct_id", distinct_id), ("event", event), ("uuid", uuid), ("now", now)]
    {
        assert_eq!(rec.headers.get(h).map(String::as_str), Some(expected), "header {h}");
    }
}

fn event(name: &str, distinct_id: &str, token: &str) -> Value {
    json!({"event": name, "properties": {"distinct_id": distinct_id, "token": token, "$current_url": "https://example.com/a"}})
}

#[test]
fn each_route_and_body_style_lands_in_kafka() {
    let cap = Capture::start("routes", &[]);
    let token = unique("phc");
    let id = |n: &str| format!("user-{n}");

    // posthog-js today: gzip body labelled text/plain, hint in the query.
    let body = json!([event("gzip-js", &id("1"), &token)]).to_string();
    let r = cap.post("/e/?ip=1&_=1700000000123&ver=1.150.0&compression=gzip-js", "text/plain", gzip(body.as_bytes()));
    assert_eq!((r.status, r.json()), (200, json!({"status": "Ok"})));

    // gzip with no hint at all, on the modern route, without trailing slash.
    let body = json!(event("gzip-sniffed", &id("2"), &token)).to_string();
    assert_eq!(cap.post("/i/v0/e", "application/json", gzip(body.as_bytes())).status, 200);

    // posthog-js base64 form, `+` sent unescaped.
    let body = json!([event("base64-form ???>>>", &id("3"), &token)]).to_string();
    let form = format!("data={}&compression=base64", base64(body.as_bytes()));
    assert_eq!(cap.post("/e/", "application/x-www-form-urlencoded; charset=UTF-8", form).status, 200);

    // GET with data= (base64, sniffed on a legacy route).
    let body = json!(event("get-data", &id("4"), &token)).to_string();
    let q = form_encode(&base64(body.as_bytes()));
    assert_eq!(cap.get(&format!("/capture/?data={q}")).status, 200);

    // Old posthog-js: lz64 in a form.
    let body = json!([event("lz64", &id("5"), &token)]).to_string();
    let form = format!("data={}&compression=lz64", form_encode(&lz_str::compress_to_base64(&body)));
    assert_eq!(cap.post("/track", "application/x-www-form-urlencoded", form).status, 200);

    // /engage: a nameless person update becomes $identify.
    let body = json!({"$token": token, "$distinct_id": id("6"), "$set": {"plan": "pro"}}).to_string();
    assert_eq!(cap.post("/engage/", "application/json", body).status, 200);

    // Server SDK batch, gzip by Content-Encoding.
    let body = json!({"api_key": token, "sent_at": "2024-05-01T10:00:00Z", "batch": [
        {"event": "batch-1", "distinct_id": id("7"), "properties": {}, "timestamp": "2024-05-01T09:59:59Z"},
        {"event": "batch-2", "distinct_id": 42, "properties": null, "timestamp": 1714557599000u64}
    ]})
    .to_string();
    let r = sluice_tests::http()
        .post(format!("{}/batch/", cap.url))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(body.as_bytes()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let records = cap.read(&cap.topics.main, 8);
    let find = |name: &str| {
        records.iter().find(|r| r.value["event"] == name).unwrap_or_else(|| panic!("{name} missing from {records:#?}"))
    };
    assert_message(find("gzip-js"), &token, &id("1"), "gzip-js");
    assert_eq!(find("gzip-js").value["sent_at"], "2023-11-14T22:13:20.123Z", "sent_at from the query's `_`");
    assert_message(find("gzip-sniffed"), &token, &id("2"), "gzip-sniffed");
    assert_message(find("base64-form ???>>>"), &token, &id("3"), "base64-form ???>>>");
    assert_message(find("get-data"), &token, &id("4"), "get-data");
    assert_message(find("lz64"), &token, &id("5"), "lz64");
    assert_message(find("$identify"), &token, &id("6"), "$identify");
    assert_eq!(find("$identify").data()["$set"], json!({"plan": "pro"}));
    let b1 = find("batch-1");
    assert_message(b1, &token, &id("7"), "batch-1");
    assert_eq!(b1.value["sent_at"], "2024-05-01T10:00:00Z");
    assert_eq!(b1.value["timestamp"], "2024-05-01T09:59:59Z");
    let b2 = find("batch-2");
    assert_message(b2, &token, "42", "batch-2");
    assert_eq!(b2.value["timestamp"], "1714557599000", "numeric timestamps kept as text");
    assert_eq!(b2.data()["properties"], json!({}), "properties: null becomes {{}}");
    assert_eq!(records.len(), 8, "nothing else: {records:#?}");
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn client_uuid_is_kept_and_ip_comes_from_forwarded_headers() {
    let cap = Capture::start("uuid-ip", &[]);
    let token = unique("phc");
    let uuid = "0190a7e8-1d2b-7c3d-8e4f-123456789abc";
    let body = json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d", "uuid": uuid, "extra_top_level": [1, 2]}]});
    let r = sluice_tests::http()
        .post(format!("{}/batch", cap.url))
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = &cap.read(&cap.topics.main, 1)[0];
    assert_eq!(rec.value["uuid"], uuid);
    assert_eq!(rec.value["ip"], "203.0.113.9");
    assert_eq!(rec.data()["extra_top_level"], json!([1, 2]), "unknown keys are kept in data");
}

#[test]
fn surrogates_and_events_with_their_own_tokens() {
    let cap = Capture::start("surrogates", &[]);
    let (t1, t2) = (unique("phc-a"), unique("phc-b"));
    let body = format!(
        r#"[{{"event":"lone \ud800 here","properties":{{"distinct_id":"d1","token":"{t1}"}}}},{{"event":"other","properties":{{"distinct_id":"d2","token":"{t2}"}}}}]"#
    );
    assert_eq!(cap.post("/e/", "text/plain", body).status, 200);
    let records = cap.read(&cap.topics.main, 2);
    let lone = records.iter().find(|r| r.value["token"] == t1.as_str()).expect("first token's event");
    assert_eq!(lone.value["event"], "lone \u{fffd} here");
    let other = records.iter().find(|r| r.value["token"] == t2.as_str()).expect("second token's event");
    assert_eq!(other.key.as_deref(), Some(format!("{t2}:d2").as_str()));
}

#[test]
fn error_answers_are_json_and_say_what_is_wrong() {
    let cap = Capture::start("errors", &[("MAX_EVENT_BODY_BYTES", "10000"), ("MAX_DECOMPRESSED_BYTES", "50000")]);
    let check = |r: sluice_tests::Response, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["status"], status);
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    };
    check(
        cap.post("/e/", "application/json", r#"[{"event":"e","properties":{"distinct_id":"d"}}]"#),
        401,
        "missing_token",
    );
    check(
        cap.post(
            "/batch/",
            "application/json",
            r#"{"api_key":"phx_personal","batch":[{"event":"e","distinct_id":"d"}]}"#,
        ),
        401,
        "personal_api_key",
    );
    check(
        cap.post(
            "/batch/",
            "application/json",
            format!(r#"{{"api_key":"{}","batch":[{{"event":"e","distinct_id":"d"}}]}}"#, "x".repeat(65)),
        ),
        401,
        "token_too_long",
    );
    let mut bad_gzip = gzip(br#"[{"event":"e"}]"#);
    bad_gzip.truncate(12);
    check(cap.post("/e/", "text/plain", bad_gzip), 400, "invalid_gzip");
    check(cap.post("/e/?compression=lz64", "text/plain", "%%%%"), 400, "invalid_lz64");
    check(cap.post("/e/", "text/plain", "{not json"), 400, "invalid_json");
    check(cap.post("/e/", "text/plain", ""), 400, "empty_payload");
    check(
        cap.post("/batch/", "application/json", r#"{"api_key":"phc_x","batch":[{"distinct_id":"d"}]}"#),
        400,
        "no_valid_event",
    );
    check(cap.post("/e/", "text/plain", vec![b'x'; 20_000]), 413, "payload_too_large");
    let bomb = gzip(format!(r#"[{{"event":"{}"}}]"#, " ".repeat(1_000_000)).as_bytes());
    assert!(bomb.len() < 10_000);
    check(cap.post("/e/", "text/plain", bomb), 413, "payload_too_large");
    // Unknown compression and junk query parameters are not errors.
    let ok = cap.post(
        "/e/?compression=brotli-2099&%zz=%&_=abc",
        "text/plain",
        r#"{"event":"e","properties":{"distinct_id":"d","token":"phc_x"}}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[test]
fn cors_beacon_options_and_operational_routes() {
    let cap = Capture::start("cors", &[]);
    let client = sluice_tests::http();
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{}/e/", cap.url))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-custom")
        .send()
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-headers"], "content-type,x-custom");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));

    let r = client
        .post(format!("{}/e/?beacon=1", cap.url))
        .header("origin", "https://app.example.com")
        .body(r#"{"event":"e","properties":{"distinct_id":"d","token":"phc_x"}}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "beacon sends get 204");
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example.com");

    assert_eq!(client.request(reqwest::Method::OPTIONS, format!("{}/batch", cap.url)).send().unwrap().status(), 200);
    assert_eq!(client.head(format!("{}/e", cap.url)).send().unwrap().status(), 200);
    assert_eq!(cap.get("/").text, "sluice-capture");
    assert_eq!(cap.get("/_liveness").status, 200);
    assert_eq!(cap.get("/_readiness").status, 200);
    let metrics = cap.get("/metrics").text;
    for name in [
        "capture_requests_total",
        "capture_request_duration_seconds_bucket",
        "capture_events_received_total",
        "capture_events_ingested_total",
        "capture_payload_bytes_bucket",
        "capture_decompression_ratio_bucket",
        "capture_producer_queue_messages",
        "capture_producer_queue_bytes",
        "capture_kafka_broker_up",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let out = std::process::Command::new(sluice_tests::bin_path("sluice-capture")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "ADDRESS",
        "KAFKA_HOSTS",
        "KAFKA_TOPIC_MAIN",
        "REDIS_URL",
        "OVERFLOW_BURST",
        "MAX_DECOMPRESSED_BYTES",
        "TRUSTED_PROXY_HOPS",
        "SHUTDOWN_DRAIN_TIMEOUT_MS",
    ] {
        // `[env: VAR=value]`, or `[env: VAR]` for the settings that carry credentials.
        let shown = help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]"));
        assert!(shown, "--help does not show {var}");
    }
}
