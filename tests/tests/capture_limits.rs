//! The bounds of capture, each configurable, each hit on purpose: slow clients, the
//! number of requests in flight, and the producer queue.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{unique, Capture};

fn host_port(cap: &Capture) -> String {
    cap.url.trim_start_matches("http://").to_string()
}

/// Sends the headers and part of a body, then stalls.
fn stalled_request(cap: &Capture) -> TcpStream {
    let mut s = TcpStream::connect(host_port(cap)).unwrap();
    write!(s, "POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"api_key\":").unwrap();
    s.flush().unwrap();
    s
}

fn read_response(mut s: TcpStream, within: Duration) -> String {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && String::from_utf8_lossy(&buf).contains("\"code\"") {
                    break;
                }
            }
            Err(e) => panic!("no response within {within:?}: {e}; got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn a_client_that_stops_sending_its_body_gets_408() {
    let cap = Capture::start("slow-body", &[("BODY_CHUNK_TIMEOUT_MS", "300")]);
    let started = Instant::now();
    let response = read_response(stalled_request(&cap), Duration::from_secs(5));
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"code\":\"request_timeout\""), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let cap = Capture::start("slow-headers", &[("HEADER_READ_TIMEOUT_MS", "300")]);
    let mut s = TcpStream::connect(host_port(&cap)).unwrap();
    write!(s, "POST /batch HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf); // returns once capture closes the connection
    assert!(started.elapsed() < Duration::from_secs(4), "connection held open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[test]
fn requests_past_the_concurrency_limit_get_503_at_once() {
    let cap = Capture::start("concurrency", &[("MAX_CONCURRENT_REQUESTS", "1"), ("BODY_CHUNK_TIMEOUT_MS", "3000")]);
    let holder = stalled_request(&cap); // takes the only slot
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let r = cap.post(
        "/batch",
        "application/json",
        json!({"api_key": "phc_x", "batch": [{"event": "e", "distinct_id": "d"}]}).to_string(),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["code"], "overloaded");
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(1), "answered at once, not queued");
    drop(holder);
    std::thread::sleep(Duration::from_millis(3500)); // the held slot times out and frees
    let token = unique("phc");
    let r = cap.post(
        "/batch",
        "application/json",
        json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn a_full_producer_queue_gives_503() {
    let cap = Capture::start("queue-full", &[("KAFKA_QUEUE_MAX_MESSAGES", "5"), ("KAFKA_LINGER_MS", "1000")]);
    let token = unique("phc");
    let events: Vec<_> = (0..50).map(|i| json!({"event": "e", "distinct_id": format!("d{i}")})).collect();
    let r = cap.post("/batch", "application/json", json!({"api_key": token, "batch": events}).to_string());
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("queue is full"), "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
}

#[test]
fn the_optional_global_rate_limit_answers_429() {
    let cap =
        Capture::start("global-limit", &[("GLOBAL_RATE_LIMIT_PER_SECOND", "1"), ("GLOBAL_RATE_LIMIT_BURST", "3")]);
    let token = unique("phc");
    let events: Vec<_> = (0..3).map(|i| json!({"event": "e", "distinct_id": format!("d{i}")})).collect();
    assert_eq!(
        cap.post("/batch", "application/json", json!({"api_key": token, "batch": events}).to_string()).status,
        200
    );
    let r = cap.post(
        "/batch",
        "application/json",
        json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]}).to_string(),
    );
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.json()["code"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
}
