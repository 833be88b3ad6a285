//! Persons through the whole pipeline: capture → Kafka → ingest → Postgres and ClickHouse.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{create_team, postgres, unique, wait_for_rows, Capture, Ingest, Sdk, TestTopics};

/// A person as Postgres holds it: uuid, properties, identified, version, distinct ids.
#[derive(Debug, Clone, PartialEq)]
struct PersonState {
    uuid: String,
    properties: Value,
    identified: bool,
    version: i64,
    ids: Vec<String>,
}

type PersonRow = (String, sqlx::types::Json<Value>, bool, i64, Vec<String>);

fn persons_of(token: &str) -> Vec<PersonState> {
    let token = token.to_string();
    postgres(move |pool| {
        Box::pin(async move {
            let rows: Vec<PersonRow> = sqlx::query_as(
                "SELECT p.uuid::text, p.properties, p.is_identified, p.version,
                        array_agg(d.distinct_id ORDER BY d.distinct_id)
                 FROM persons p
                 JOIN person_distinct_ids d ON d.person_id = p.id
                 JOIN teams t ON t.id = p.team_id
                 WHERE t.api_token = $1
                 GROUP BY p.id ORDER BY min(d.distinct_id)",
            )
            .bind(token)
            .fetch_all(pool)
            .await
            .expect("persons query");
            rows.into_iter()
                .map(|(uuid, props, identified, version, ids)| PersonState {
                    uuid,
                    properties: props.0,
                    identified,
                    version,
                    ids,
                })
                .collect()
        })
    })
}

/// Sends one event and waits until ingest wrote it, so the next one sees its effect.
struct Sender<'a> {
    cap: &'a Capture,
    ingest: &'a Ingest,
    token: String,
    sent: usize,
}

impl Sender<'_> {
    fn send(&mut self, event: &str, distinct_id: &str, properties: Value) -> Value {
        let uuid = uuid::Uuid::now_v7().to_string();
        let body = json!({"api_key": self.token, "batch": [{"event": event, "distinct_id": distinct_id, "uuid": uuid, "properties": properties}]});
        let r = self.cap.post("/batch", "application/json", body.to_string());
        assert_eq!(r.status, 200, "{}", r.text);
        self.sent += 1;
        let sql = format!(
            "SELECT event, distinct_id, person_id, person_mode, person_properties FROM {} WHERE uuid = '{uuid}'",
            self.ingest.table("events")
        );
        let rows = wait_for_rows(&sql, 1, Duration::from_secs(30));
        assert_eq!(rows.len(), 1, "{event} not written; ingest log:\n{}", self.ingest.log_text());
        rows[0].clone()
    }
}

/// Ingestion warnings of `kind`, once there are at least `expected` (or 10 s passed):
/// a batch writes its warnings after its events, so the event's row is seen first.
fn warnings(ingest: &Ingest, kind: &str, expected: usize) -> usize {
    sluice_tests::wait_for_rows(
        &format!("SELECT type FROM {} WHERE type = '{kind}'", ingest.table("ingestion_warnings")),
        expected,
        Duration::from_secs(10),
    )
    .len()
}

#[test]
fn identify_alias_merge_and_property_updates() {
    let cap = Capture::start("persons", &[]);
    let ingest = Ingest::start("persons", &cap.topics.main, &[]);
    let token = create_team(&unique("persons team"));
    let mut s = Sender { cap: &cap, ingest: &ingest, token: token.clone(), sent: 0 };

    // Anonymous browsing, then identify: one person, identified, with both ids.
    let e1 = s.send("$pageview", "anon-1", json!({"$set_once": {"first_page": "/home"}, "$browser": "Firefox"}));
    assert_eq!(e1["person_mode"], "full");
    s.send(
        "$identify",
        "user-1",
        json!({"$anon_distinct_id": "anon-1", "$set": {"plan": "pro", "email": "a@example.com"}}),
    );
    let e3 = s.send("upgraded", "user-1", json!({"$set": {"plan": "enterprise"}, "$unset": ["email"]}));
    assert_eq!(e1["person_id"], e3["person_id"], "later events are on the same person");
    let persons = persons_of(&token);
    assert_eq!(persons.len(), 1, "{persons:#?}");
    let p = &persons[0];
    assert_eq!(p.ids, vec!["anon-1", "user-1"]);
    assert!(p.identified);
    assert_eq!(p.properties["plan"], "enterprise");
    assert_eq!(p.properties["first_page"], "/home");
    assert_eq!(p.properties["$initial_browser"], "Firefox");
    assert!(p.properties.get("email").is_none(), "$unset removed it");
    assert_eq!(p.uuid, e1["person_id"]);
    let person_props: Value = serde_json::from_str(e3["person_properties"].as_str().unwrap()).unwrap();
    assert_eq!(person_props["plan"], "enterprise", "the event row carries the person's properties");

    // $create_alias attaches a new id to the person.
    s.send("$create_alias", "user-1", json!({"alias": "user-1-old-id"}));
    assert_eq!(persons_of(&token)[0].ids, vec!["anon-1", "user-1", "user-1-old-id"]);

    // Two identified persons: a plain identify between them is refused.
    s.send("$identify", "user-2", json!({"$anon_distinct_id": "anon-2"}));
    assert_eq!(persons_of(&token).len(), 2);
    s.send("$identify", "user-1", json!({"$anon_distinct_id": "user-2"}));
    assert_eq!(persons_of(&token).len(), 2, "merge of two identified persons refused");
    assert_eq!(
        wait_for_rows(
            &format!(
                "SELECT type FROM {} WHERE type = 'cannot_merge_already_identified'",
                ingest.table("ingestion_warnings")
            ),
            1,
            Duration::from_secs(10)
        )
        .len(),
        1
    );

    // ...unless the event says so.
    s.send("$merge_dangerously", "user-1", json!({"alias": "user-2"}));
    let persons = persons_of(&token);
    assert_eq!(persons.len(), 1, "{persons:#?}");
    assert_eq!(persons[0].ids, vec!["anon-1", "anon-2", "user-1", "user-1-old-id", "user-2"]);
    assert_eq!(persons[0].uuid, e1["person_id"], "the target person survives");

    // Illegal ids are never merged on.
    s.send("$identify", "user-1", json!({"$anon_distinct_id": "null"}));
    assert_eq!(warnings(&ingest, "cannot_merge_with_illegal_distinct_id", 1), 1);
    assert_eq!(persons_of(&token)[0].ids.len(), 5);

    // Personless events create no person.
    let e = s.send("ping", "someone-new", json!({"$process_person_profile": false}));
    assert_eq!(e["person_mode"], "propertyless");
    assert_eq!(persons_of(&token).len(), 1);

    // ClickHouse has the persons too: the merged-away one deleted, the survivor at its latest version.
    let ch_persons = wait_for_rows(
        &format!("SELECT id, is_deleted, version FROM {} FINAL ORDER BY is_deleted", ingest.table("persons")),
        2,
        Duration::from_secs(10),
    );
    assert_eq!(ch_persons.len(), 2, "{ch_persons:?}");
    assert_eq!(ch_persons[0]["id"], e1["person_id"]);
    assert_eq!(ch_persons[0]["is_deleted"], 0);
    assert_eq!(ch_persons[0]["version"].as_str().unwrap().parse::<i64>().unwrap(), persons[0].version);
    assert_eq!(ch_persons[1]["is_deleted"], 1);
    let ids = wait_for_rows(
        &format!("SELECT distinct_id, person_id FROM {} FINAL", ingest.table("person_distinct_ids")),
        5,
        Duration::from_secs(10),
    );
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|r| r["person_id"] == e1["person_id"]), "every id points at the survivor: {ids:?}");
}

/// A fixed story of 3 users over 60 events: browsing, identifies, an alias, updates.
fn story() -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    for round in 0..5 {
        for u in 0..3 {
            events.push((
                "$pageview".to_string(),
                format!("anon-{u}"),
                json!({"$set_once": {"first_round": round}, "$set": {"last_round": round}}),
            ));
        }
        if round == 2 {
            for u in 0..3 {
                events.push((
                    "$identify".to_string(),
                    format!("user-{u}"),
                    json!({"$anon_distinct_id": format!("anon-{u}"), "$set": {"n": u}}),
                ));
            }
            events.push(("$create_alias".to_string(), "user-0".to_string(), json!({"alias": "user-0-mobile"})));
        }
        for u in 0..3 {
            events.push((
                "click".to_string(),
                format!("user-{u}"),
                json!({"$set": {"clicks_round": round}, "$unset": ["last_round"]}),
            ));
        }
    }
    events
}

/// Persons without their random parts, comparable across teams.
fn shape(persons: &[PersonState]) -> Vec<(Vec<String>, Value, bool)> {
    persons.iter().map(|p| (p.ids.clone(), p.properties.clone(), p.identified)).collect()
}

#[test]
fn the_result_does_not_depend_on_batch_size() {
    let kafka = sluice_tests::kafka_hosts();
    let mut shapes = Vec::new();
    for size in ["1", "7", "500"] {
        // One partition: the story's order is the topic's order.
        let topics = TestTopics::create_with_partitions(&kafka, &format!("batching-{size}"), 1);
        let cap = Capture::start_with_topics(&format!("batching-{size}"), topics, &kafka, &[]);
        let ingest = Ingest::start(
            &format!("batching_{size}"),
            &cap.topics.main,
            &[("BATCH_MAX_EVENTS", size), ("BATCH_MAX_WAIT_MS", "1000")],
        );
        let token = create_team(&unique(&format!("batch {size}")));
        let batch: Vec<Value> =
            story().into_iter().map(|(e, d, p)| json!({"event": e, "distinct_id": d, "properties": p})).collect();
        let n = batch.len();
        assert_eq!(
            cap.post("/batch", "application/json", json!({"api_key": token, "batch": batch}).to_string()).status,
            200
        );
        let rows = wait_for_rows(&format!("SELECT uuid FROM {}", ingest.table("events")), n, Duration::from_secs(60));
        assert_eq!(rows.len(), n, "batch size {size}: {}", ingest.log_text());
        shapes.push((size, shape(&persons_of(&token))));
    }
    assert_eq!(shapes[0].1.len(), 3, "{:#?}", shapes[0]);
    assert_eq!(shapes[0].1[0].0, vec!["anon-0", "user-0", "user-0-mobile"]);
    for (size, s) in &shapes[1..] {
        assert_eq!(s, &shapes[0].1, "batch size {size} differs from batch size 1");
    }
}

#[test]
fn restrictions_from_configuration_and_redis_drop_events_or_skip_persons() {
    // The token must exist before ingest starts, to be named in its configuration.
    sluice_tests::ingest_command(&["migrate"], &[]);
    let token = create_team(&unique("restricted team"));
    let drop = format!("{token}:blocked");
    let skip = format!("{token}:crawler");
    // The same two, set at run time in Redis, for two other distinct ids.
    let prefix = format!("{}/", unique("restrict"));
    sluice_tests::redis_zadd(&format!("{prefix}ingest-restrictions/drop-events"), &format!("{token}:r-blocked"), 600);
    sluice_tests::redis_zadd(&format!("{prefix}ingest-restrictions/skip-persons"), &format!("{token}:r-crawler"), 600);
    // Expired: applies no more.
    sluice_tests::redis_zadd(&format!("{prefix}ingest-restrictions/drop-events"), &format!("{token}:r-human"), -10);
    let cap = Capture::start("restrict", &[]);
    let ingest = Ingest::start(
        "restrict",
        &cap.topics.main,
        &[
            ("RESTRICT_DROP_EVENTS", drop.as_str()),
            ("RESTRICT_SKIP_PERSONS", skip.as_str()),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
            ("REDIS_REFRESH_INTERVAL_MS", "100"),
        ],
    );
    std::thread::sleep(Duration::from_secs(1)); // the first read of Redis, at start
    let batch = json!({"api_key": token, "batch": [
        {"event": "e", "distinct_id": "blocked", "properties": {"$set": {"a": 1}}},
        {"event": "e", "distinct_id": "crawler", "properties": {"$set": {"a": 1}}},
        {"event": "e", "distinct_id": "human", "properties": {"$set": {"a": 1}}},
        {"event": "e", "distinct_id": "r-blocked", "properties": {"$set": {"a": 1}}},
        {"event": "e", "distinct_id": "r-crawler", "properties": {"$set": {"a": 1}}},
        {"event": "e", "distinct_id": "r-human", "properties": {"$set": {"a": 1}}},
    ]});
    assert_eq!(cap.post("/batch", "application/json", batch.to_string()).status, 200);
    let sql = format!("SELECT distinct_id, person_mode FROM {} ORDER BY distinct_id", ingest.table("events"));
    wait_for_rows(&sql, 4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500)); // the dropped events would have landed by now
    let rows = sluice_tests::clickhouse_rows(&sql);
    assert_eq!(
        rows,
        vec![
            json!({"distinct_id": "crawler", "person_mode": "propertyless"}),
            json!({"distinct_id": "human", "person_mode": "full"}),
            json!({"distinct_id": "r-crawler", "person_mode": "propertyless"}),
            json!({"distinct_id": "r-human", "person_mode": "full"}),
        ]
    );
    let persons = persons_of(&token);
    assert_eq!(
        persons.iter().map(|p| p.ids.clone()).collect::<Vec<_>>(),
        vec![vec!["human".to_string()], vec!["r-human".to_string()]]
    );
}

#[test]
fn posthog_python_drives_the_person_story() {
    sdk_person_story(Sdk::Python);
}

#[test]
fn posthog_node_drives_the_person_story() {
    sdk_person_story(Sdk::Node);
}

/// The person rules as the real SDKs exercise them, one SDK call at a time (each waits
/// for its row, so the next sees its effect): `$set`/`$set_once`/`$unset`, anonymous →
/// identify → later events on that person, an alias refused between two identified
/// persons, `$merge_dangerously`, a personless event.
fn sdk_person_story(sdk: Sdk) {
    // The story's own properties, without those an SDK adds about its platform
    // (posthog-python sends $os, which normalization turns into $set/$set_once too).
    let own = |props: &Value| -> Value {
        props
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let cap = Capture::start("sdk-persons", &[]);
    let ingest = Ingest::start("sdk_persons", &cap.topics.main, &[]);
    let token = create_team(&unique("sdk persons"));
    let run = unique("story");
    let id = |p: &str| format!("{p}-{run}");
    let events = ingest.table("events");
    let mut written = 0;
    let mut step = |name: &str| {
        let out = sdk.send_command(&cap.url, &token, &run, true).arg(name).output().expect("sdk client");
        assert!(out.status.success(), "{sdk:?} {name}: {}", String::from_utf8_lossy(&out.stderr));
        written += 1;
        let rows = wait_for_rows(&format!("SELECT uuid FROM {events} FINAL"), written, Duration::from_secs(30));
        assert_eq!(rows.len(), written, "{sdk:?} {name}: {}", ingest.log_text());
    };
    let ids = |persons: &[PersonState]| persons.iter().map(|p| p.ids.clone()).collect::<Vec<_>>();

    step("set");
    step("update");
    let persons = persons_of(&token);
    assert_eq!(ids(&persons), vec![vec![id("a2")]]);
    assert_eq!(own(&persons[0].properties), json!({"plan": "pro", "source": "ads"}), "set, set_once kept, unset");
    assert!(!persons[0].identified);

    step("identify");
    step("later");
    let persons = persons_of(&token);
    assert_eq!(ids(&persons), vec![vec![id("a2"), id("u2")]]);
    assert!(persons[0].identified);
    let later = sluice_tests::clickhouse_rows(&format!("SELECT person_id FROM {events} WHERE event = 'later'"));
    assert_eq!(later[0]["person_id"], persons[0].uuid.as_str(), "the anonymous id's later event is on the person");

    step("other");
    step("alias");
    let refused = wait_for_rows(
        &format!(
            "SELECT type FROM {} WHERE type = 'cannot_merge_already_identified'",
            ingest.table("ingestion_warnings")
        ),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(ids(&persons_of(&token)), vec![vec![id("a2"), id("u2")], vec![id("a3"), id("u3")]]);

    step("dangerous");
    let persons = persons_of(&token);
    assert_eq!(ids(&persons), vec![vec![id("a2"), id("a3"), id("u2"), id("u3")]]);
    assert_eq!(own(&persons[0].properties), json!({"name": "other", "plan": "pro", "source": "ads"}));

    step("personless");
    let ghost = sluice_tests::clickhouse_rows(&format!("SELECT person_mode FROM {events} WHERE event = 'ghost'"));
    assert_eq!(ghost[0]["person_mode"], "propertyless");
    assert_eq!(persons_of(&token).len(), 1, "no person for the personless event");
}
