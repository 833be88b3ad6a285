//! Faults: the broker going away, and SIGTERM under load. The promise under test: an
//! event answered 200 is in Kafka.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{create_topics, free_port, read_topic, unique, Capture, TestTopics};

/// A Tansu broker of this test's own, so stopping it disturbs no other test.
struct OwnBroker {
    child: Child,
    port: u16,
}

impl OwnBroker {
    fn start(port: u16) -> OwnBroker {
        let tansu = sluice_tests::tansu_path();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "own broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnBroker { child, port }
    }

    fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn one_event(token: &str, uuid: &str) -> String {
    json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d", "uuid": uuid}]}).to_string()
}

#[test]
fn broker_down_gives_503_and_nothing_acknowledged_after_it_returns_is_missing() {
    let port = free_port();
    let mut broker = OwnBroker::start(port);
    let topics = TestTopics::create(&broker.hosts(), "broker-down");
    let cap = Capture::start_with_topics(
        "broker-down",
        topics.clone(),
        &broker.hosts(),
        &[("KAFKA_MESSAGE_TIMEOUT_MS", "3000")],
    );
    let token = unique("phc");
    assert_eq!(
        cap.post("/batch", "application/json", one_event(&token, &uuid::Uuid::now_v7().to_string())).status,
        200
    );

    broker.stop();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = cap.post("/batch", "application/json", one_event(&token, &uuid::Uuid::now_v7().to_string()));
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(10), "answered within the message timeout");
    assert_eq!(r.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("5"));
    assert_eq!(r.json()["code"], "service_unavailable");
    // Readiness follows the broker once the client notices.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cap.get("/_readiness").status != 503 {
        assert!(Instant::now() < deadline, "readiness still 200 with the broker down");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every request is refused, but the identical warning each one gives is written a few
    // times and the rest counted in one line, not once per request.
    let refused: Vec<_> = (0..40)
        .map(|_| {
            let (url, body) = (cap.url.clone(), one_event(&token, &uuid::Uuid::now_v7().to_string()));
            std::thread::spawn(move || {
                let r = sluice_tests::http().post(format!("{url}/batch")).body(body).send().unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    for r in refused {
        assert_eq!(r.join().unwrap(), 503);
    }
    let deadline = Instant::now() + Duration::from_secs(25);
    let held = loop {
        let log = cap.log_text();
        if let Some(line) =
            log.lines().find(|l| l.contains("identical log lines held back") && l.contains("request not accepted"))
        {
            break (
                line.to_string(),
                log.lines().filter(|l| l.contains("WARN") && l.contains("request not accepted")).count(),
            );
        }
        assert!(Instant::now() < deadline, "no report of held-back warnings:\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("{} warnings written for 41 refused requests; {}", held.1, held.0);
    assert!(held.1 <= 12, "{} warnings for 41 refused requests", held.1);
    let count: u64 = held.0.split("held=").nth(1).and_then(|n| n.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    assert!(count >= 25, "{}", held.0);

    // The broker comes back empty (memory storage), so the topics are made again.
    let _broker = OwnBroker::start(port);
    create_topics(&format!("127.0.0.1:{port}"), &topics.all(), 2);
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 20 {
        assert!(Instant::now() < deadline, "capture never recovered; log:\n{}", cap.log_text());
        let uuid = uuid::Uuid::now_v7().to_string();
        let r = cap.post("/batch", "application/json", one_event(&token, &uuid));
        match r.status {
            200 => acked.push(uuid),
            503 => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let landed: HashSet<String> =
        read_topic(&format!("127.0.0.1:{port}"), &topics.main, acked.len(), Duration::from_secs(30))
            .iter()
            .map(|r| r.value["uuid"].as_str().unwrap().to_string())
            .collect();
    let missing: Vec<_> = acked.iter().filter(|u| !landed.contains(*u)).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert_eq!(cap.get("/_readiness").status, 200);
}

#[test]
fn sigterm_during_load_loses_no_acknowledged_event() {
    let mut cap = Capture::start("sigterm", &[("SHUTDOWN_READINESS_DELAY_MS", "1500")]);
    let token = unique("phc");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = cap.url.clone();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop, url, token) = (acked.clone(), stop.clone(), url.clone(), token.clone());
            std::thread::spawn(move || {
                let client = sluice_tests::http();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let uuids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
                    let batch: Vec<_> = uuids
                        .iter()
                        .map(|u| json!({"event": "load", "distinct_id": format!("user-{t}-{sent}"), "uuid": u}))
                        .collect();
                    sent += 1;
                    match client.post(format!("{url}/batch")).json(&json!({"api_key": token, "batch": batch})).send() {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().extend(uuids),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(10)), // closed: shutting down
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "load was flowing before SIGTERM");

    let pid = cap.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cap.get("/_readiness").status, 503, "readiness fails from SIGTERM on");
    let status = cap.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    assert!(status.success(), "clean exit: {status:?}\n{}", cap.log_text());

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > before, "requests were still answered during the drain window");
    let landed: HashSet<String> =
        cap.read(&cap.topics.main, acked.len()).iter().map(|r| r.value["uuid"].as_str().unwrap().to_string()).collect();
    let missing: Vec<_> = acked.iter().filter(|u| !landed.contains(*u)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged events missing", missing.len(), acked.len());
}
