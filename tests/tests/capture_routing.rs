//! Where events go: overflow (rate and forced), historical, replay grouping and
//! splitting, quota limits, and a bad event among good ones.

use serde_json::{json, Value};
use sluice_tests::{redis_zadd, unique, Capture};

fn batch(token: &str, events: Vec<Value>) -> String {
    json!({"api_key": token, "batch": events}).to_string()
}

/// Posts a `/batch` body and returns the status.
fn post_batch(cap: &Capture, token: &str, events: Vec<Value>) -> u16 {
    cap.post("/batch", "application/json", batch(token, events)).status
}

fn ev(name: &str, distinct_id: &str) -> Value {
    json!({"event": name, "distinct_id": distinct_id, "properties": {}})
}

#[test]
fn hot_keys_overflow_after_their_burst() {
    let cap = Capture::start("overflow-rate", &[("OVERFLOW_PER_SECOND", "1"), ("OVERFLOW_BURST", "5")]);
    let token = unique("phc");
    let events: Vec<Value> = (0..12).map(|i| ev(&format!("hot-{i}"), "bot")).collect();
    assert_eq!(post_batch(&cap, &token, events), 200);
    assert_eq!(post_batch(&cap, &token, vec![ev("calm", "human")]), 200);

    let main = cap.read(&cap.topics.main, 6);
    let overflow = cap.read(&cap.topics.overflow, 7);
    let names = |rs: &[sluice_tests::Record]| {
        rs.iter().map(|r| r.value["event"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(main.len(), 6, "burst of 5 plus the calm key: {:?}", names(&main));
    assert!(names(&main).contains(&"calm".to_string()));
    assert_eq!(overflow.len(), 7, "{:?}", names(&overflow));
    assert!(overflow.iter().all(|r| r.key.is_none()), "overflow drops the key by default");
    assert!(cap.metric("capture_overflow_reroutes_total", "reason=\"rate\"") >= 7.0);
}

#[test]
fn forced_overflow_from_env_and_redis_and_locality_kept_when_asked() {
    let token_env = unique("phc-env");
    let token_redis = unique("phc-redis");
    let forced = format!("{token_env},other:key");
    let cap = Capture::start(
        "overflow-forced",
        &[("OVERFLOW_FORCED_KEYS", &forced), ("OVERFLOW_PRESERVE_PARTITION_LOCALITY", "true")],
    );
    redis_zadd(&format!("{}capture-overflow/events", cap.redis_prefix), &format!("{token_redis}:vip"), 3600);
    std::thread::sleep(std::time::Duration::from_millis(400)); // two refreshes

    assert_eq!(post_batch(&cap, &token_env, vec![ev("env-forced", "a")]), 200);
    assert_eq!(
        cap.post(
            "/batch",
            "application/json",
            batch(&token_redis, vec![ev("redis-forced", "vip"), ev("not-forced", "someone")])
        )
        .status,
        200
    );

    let overflow = cap.read(&cap.topics.overflow, 2);
    let main = cap.read(&cap.topics.main, 1);
    let find = |rs: &[sluice_tests::Record], n: &str| rs.iter().find(|r| r.value["event"] == n).cloned();
    let env_forced = find(&overflow, "env-forced").expect("env-forced in overflow");
    assert_eq!(env_forced.key.as_deref(), Some(format!("{token_env}:a").as_str()), "locality preserved");
    assert!(find(&overflow, "redis-forced").is_some(), "redis-forced in overflow");
    assert!(find(&main, "not-forced").is_some());
    assert_eq!(overflow.len(), 2);
    assert_eq!(main.len(), 1);
}

#[test]
fn historical_batches_go_to_their_topic_and_are_never_overflowed() {
    let cap = Capture::start("historical", &[("OVERFLOW_PER_SECOND", "1"), ("OVERFLOW_BURST", "1")]);
    let token = unique("phc");
    let body = json!({"api_key": token, "historical_migration": true, "batch": (0..5).map(|i| ev(&format!("old-{i}"), "same")).collect::<Vec<_>>()});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);
    let hist = cap.read(&cap.topics.historical, 5);
    assert_eq!(hist.len(), 5);
    for r in &hist {
        assert_eq!(r.key.as_deref(), Some(format!("{token}:same").as_str()));
        assert_eq!(r.value["historical_migration"], true);
    }
    assert!(cap.read(&cap.topics.overflow, 0).is_empty());
}

fn snapshot(session: &str, data: Value) -> Value {
    json!({"event": "$snapshot", "properties": {"distinct_id": "viewer", "$session_id": session, "$window_id": "w", "$snapshot_data": data}})
}

#[test]
fn replay_is_grouped_per_session_and_split_when_large() {
    let cap = Capture::start("replay", &[("KAFKA_MESSAGE_MAX_BYTES", "60000")]);
    let token = unique("phc");
    let body = json!({"api_key": token, "batch": [
        snapshot("s-one", json!([{"type": 2, "n": 1}])),
        snapshot("s-two", json!({"type": 3, "n": 2})),
        snapshot("s-one", json!([{"type": 3, "n": 3}])),
    ]});
    let r = cap.post("/s/", "application/json", gzip_json(&body));
    assert_eq!((r.status, r.json()), (200, json!({"status": "Ok"})));

    // A large session: 30 items of ~10 KB each into 60 KB messages.
    let big: Vec<Value> = (0..30).map(|i| json!({"type": 3, "i": i, "pad": "x".repeat(10_000)})).collect();
    let body = json!({"api_key": token, "batch": [snapshot("s-big", Value::Array(big.clone()))]});
    assert_eq!(cap.post("/s/", "application/json", gzip_json(&body)).status, 200);

    // $snapshot on an ordinary route goes to replay too.
    let body = json!({"api_key": token, "batch": [snapshot("s-three", json!([{"n": 4}])), ev("plain", "viewer")]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);

    let replay = cap.read(&cap.topics.replay, 8);
    let of = |s: &str| replay.iter().filter(|r| r.key.as_deref() == Some(s)).collect::<Vec<_>>();
    let one = of("s-one");
    assert_eq!(one.len(), 1, "one message for both s-one events");
    assert_eq!(one[0].value["event"], "$snapshot_items");
    let items = one[0].data()["properties"]["$snapshot_items"].clone();
    assert_eq!(items, json!([{"type": 2, "n": 1}, {"type": 3, "n": 3}]));
    assert_eq!(one[0].data()["properties"]["$session_id"], "s-one");
    assert_eq!(of("s-two").len(), 1);
    assert_eq!(of("s-three").len(), 1);
    let parts = of("s-big");
    assert!(parts.len() >= 5, "split into {} messages", parts.len());
    let rejoined: Vec<Value> =
        parts.iter().flat_map(|r| r.data()["properties"]["$snapshot_items"].as_array().unwrap().clone()).collect();
    assert_eq!(rejoined, big, "every item once, in order");
    assert_eq!(cap.read(&cap.topics.main, 1).len(), 1, "the plain event stays on main");
}

fn gzip_json(v: &Value) -> Vec<u8> {
    sluice_tests::gzip(v.to_string().as_bytes())
}

#[test]
fn replay_overflow_sessions_and_recording_quotas() {
    let cap = Capture::start("replay-overflow", &[]);
    let token = unique("phc");
    let limited = unique("phc-limited");
    redis_zadd(&format!("{}capture-overflow/replay", cap.redis_prefix), "s-hot", 3600);
    redis_zadd(&format!("{}quota-limits/recordings", cap.redis_prefix), &limited, 3600);
    std::thread::sleep(std::time::Duration::from_millis(400));

    let body = json!({"api_key": token, "batch": [snapshot("s-hot", json!([1])), snapshot("s-cold", json!([2]))]});
    assert_eq!(cap.post("/s", "application/json", body.to_string()).status, 200);
    let body = json!({"api_key": limited, "batch": [snapshot("s-x", json!([3]))]});
    let r = cap.post("/s", "application/json", body.to_string());
    assert_eq!((r.status, r.json()), (200, json!({"status": "Ok", "quota_limited": ["recordings"]})));

    let overflow = cap.read(&cap.topics.replay_overflow, 1);
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].key.as_deref(), Some("s-hot"));
    let replay = cap.read(&cap.topics.replay, 1);
    assert_eq!(replay.iter().map(|r| r.key.clone().unwrap()).collect::<Vec<_>>(), vec!["s-cold"]);
    assert!(cap.metric("capture_events_dropped_total", "cause=\"quota_limited_recordings\"") >= 1.0);
}

#[test]
fn quota_limited_tokens_are_dropped_with_200() {
    let cap = Capture::start("quota", &[]);
    let limited = unique("phc-limited");
    let expired = unique("phc-expired");
    let free = unique("phc-free");
    redis_zadd(&format!("{}quota-limits/events", cap.redis_prefix), &limited, 3600);
    redis_zadd(&format!("{}quota-limits/events", cap.redis_prefix), &expired, -10);
    std::thread::sleep(std::time::Duration::from_millis(400));

    let r = cap.post("/batch", "application/json", batch(&limited, vec![ev("dropped", "a"), ev("dropped", "b")]));
    assert_eq!((r.status, r.json()), (200, json!({"status": "Ok"})), "SDKs must not retry");
    assert_eq!(post_batch(&cap, &expired, vec![ev("limit-expired", "a")]), 200);
    assert_eq!(post_batch(&cap, &free, vec![ev("kept", "a")]), 200);

    let main = cap.read(&cap.topics.main, 2);
    let names: Vec<_> = main.iter().map(|r| r.value["event"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"kept") && names.contains(&"limit-expired"), "{names:?}");
    assert_eq!(cap.metric("capture_events_dropped_total", "cause=\"quota_limited\""), 2.0);
}

#[test]
fn a_bad_event_among_good_ones_is_dropped_alone() {
    let cap = Capture::start("bad-among-good", &[]);
    let token = unique("phc");
    let body = json!({"api_key": token, "batch": [
        ev("good-1", "a"),
        {"distinct_id": "no-name"},
        {"event": "no-id", "properties": {}},
        {"event": "blank-id", "distinct_id": "   "},
        {"event": "bad-uuid", "distinct_id": "a", "uuid": "not-a-uuid"},
        "not an object",
        ev("good-2", "b"),
    ]});
    let r = cap.post("/batch", "application/json", body.to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    let main = cap.read(&cap.topics.main, 2);
    let mut names: Vec<_> = main.iter().map(|r| r.value["event"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, vec!["good-1", "good-2"]);
    for cause in ["missing_event_name", "missing_distinct_id", "empty_distinct_id", "invalid_uuid", "not_an_object"] {
        assert_eq!(cap.metric("capture_events_dropped_total", &format!("cause=\"{cause}\"")), 1.0, "{cause}");
    }
}

#[test]
fn oversized_event_fails_the_request_before_anything_is_produced() {
    let cap = Capture::start("oversized", &[("KAFKA_MESSAGE_MAX_BYTES", "20000")]);
    let token = unique("phc");
    let big = json!({"event": "big", "distinct_id": "a", "properties": {"pad": "x".repeat(30_000)}});
    let r = cap.post("/batch", "application/json", batch(&token, vec![ev("small", "a"), big]));
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.json()["code"], "event_too_large");
    assert_eq!(post_batch(&cap, &token, vec![ev("marker", "a")]), 200);
    let main = cap.read(&cap.topics.main, 1);
    assert_eq!(
        main.iter().map(|r| r.value["event"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["marker"],
        "the small event of the refused request was not written"
    );
}
