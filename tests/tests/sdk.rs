//! The real SDKs, `posthog` from PyPI and `posthog-node` from npm, pointed at a running
//! capture: what they send (capture, identify, alias, group identify; gzip on and off)
//! arrives in Kafka as the events they meant.

use std::process::Command;

use sluice_tests::{unique, Capture, Record, Sdk};

fn check_sequence(records: &[Record], token: &str, run: &str) {
    let anon = format!("anon-{run}");
    let user = format!("user-{run}");
    let find = |event: &str| {
        records.iter().find(|r| r.value["event"] == event).unwrap_or_else(|| {
            panic!("{event} missing; got {:#?}", records.iter().map(|r| &r.value["event"]).collect::<Vec<_>>())
        })
    };
    for r in records {
        assert_eq!(r.value["token"], token);
        assert_eq!(r.key.as_deref(), Some(format!("{token}:{}", r.value["distinct_id"].as_str().unwrap()).as_str()));
        assert!(r.value["sent_at"].is_string() || r.value["sent_at"].is_null());
    }

    let first = find("sdk test event");
    assert_eq!(first.value["distinct_id"], anon.as_str());
    let data = first.data();
    assert_eq!(data["properties"]["run"], run);
    assert_eq!(data["properties"]["n"], 1);
    assert_eq!(data["properties"]["$set_once"]["first_seen_run"], run);
    assert!(data["properties"]["$lib"].is_string(), "the SDK names itself");
    assert_eq!(first.value["uuid"], data["uuid"]);

    let identify = find("$identify");
    assert_eq!(identify.value["distinct_id"], user.as_str());
    let props = &identify.data()["properties"];
    assert_eq!(props["$anon_distinct_id"], anon.as_str());
    let plan = props["$set"]["plan"].clone();
    assert_eq!(plan, "pro", "identify carries $set: {props}");

    // The SDKs disagree on direction (python: previous id is the event's distinct_id;
    // node: the new one is); both mean "these two ids are one person".
    let alias = find("$create_alias");
    let mut pair = [
        alias.value["distinct_id"].as_str().unwrap().to_string(),
        alias.data()["properties"]["alias"].as_str().unwrap().to_string(),
    ];
    pair.sort();
    assert_eq!(pair, [anon.clone(), user.clone()]);

    let group = find("$groupidentify");
    let props = &group.data()["properties"];
    assert_eq!(props["$group_type"], "company");
    assert_eq!(props["$group_key"], format!("acme-{run}"));
    assert_eq!(props["$group_set"]["name"], "Acme");

    let grouped = find("grouped");
    assert_eq!(grouped.data()["properties"]["$groups"]["company"], format!("acme-{run}"));
    assert_eq!(records.len(), 5, "exactly the five events, once each");
}

fn run_sdk(cap: &Capture, program: &mut Command, what: &str) {
    let out = program.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}\ncapture log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cap.log_text()
    );
}

/// The five events of the `i`-th sequence sent to `cap`, the one under `token`.
fn sequence_of(cap: &Capture, token: &str, i: usize) -> Vec<Record> {
    cap.read(&cap.topics.main, 5 * (i + 1)).into_iter().filter(|r| r.value["token"] == token).collect()
}

/// Runs one SDK's sequence with gzip off then on, each under a token of its own, and
/// checks what arrived.
fn sdk_sequence(test: &str, sdk: Sdk) {
    let cap = Capture::start(test, &[]);
    for (i, gzip) in [false, true].into_iter().enumerate() {
        let token = unique(&format!("phc-{test}"));
        let run = unique(test);
        let mut program = sdk.send_command(&cap.url, &token, &run, gzip);
        run_sdk(&cap, &mut program, test);
        let records = sequence_of(&cap, &token, i);
        check_sequence(&records, &token, &run);
    }
}

#[test]
fn posthog_python_with_and_without_gzip() {
    sdk_sequence("sdk-python", Sdk::Python);
}

#[test]
fn posthog_node_with_and_without_gzip() {
    sdk_sequence("sdk-node", Sdk::Node);
}

/// posthog-python's `capture_mode="v1"`: `POST /i/v1/analytics/events` with a Bearer
/// token, the SDK named in `PostHog-Sdk-Info` and per-event results, its body plain,
/// gzip, deflate (zlib) or zstd. The same sequence arrives as the same five events,
/// `$lib` taken from the header.
#[test]
fn posthog_python_capture_mode_v1_with_every_compression() {
    let cap = Capture::start("sdk-python-v1", &[]);
    for (i, compression) in ["none", "gzip", "deflate", "zstd"].into_iter().enumerate() {
        let token = unique("phc-sdk-v1");
        let run = unique(&format!("v1-{compression}"));
        let mut program = Sdk::Python.send_command(&cap.url, &token, &run, false);
        program.env("SLUICE_CAPTURE_MODE", "v1").env("SLUICE_CAPTURE_COMPRESSION", compression);
        run_sdk(&cap, &mut program, &format!("posthog-python v1 ({compression})"));
        let records = sequence_of(&cap, &token, i);
        check_sequence(&records, &token, &run);
        for r in &records {
            assert_eq!(r.data()["properties"]["$lib"], "posthog-python", "{compression}: from PostHog-Sdk-Info");
            assert!(r.value["sent_at"].is_string(), "{compression}: the batch's send time");
        }
    }
    assert!(cap.log_text().lines().all(|l| !l.contains("ERROR")), "{}", cap.log_text());
}
