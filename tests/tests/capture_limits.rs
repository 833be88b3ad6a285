//! The bounds of capture, each configurable, each hit on purpose: slow clients, idle
//! connections, the number of requests in flight, and the producer queue.

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
    // A long linger keeps the first request waiting for its acknowledgement, in its slot.
    let cap = Capture::start("concurrency", &[("MAX_CONCURRENT_REQUESTS", "1"), ("KAFKA_LINGER_MS", "2500")]);
    let body = |token: &str| json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]}).to_string();
    let holder = {
        let (url, body) = (cap.url.clone(), body(&unique("phc")));
        std::thread::spawn(move || {
            sluice_tests::http().post(format!("{url}/batch")).body(body).send().unwrap().status()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let r = cap.post("/batch", "application/json", body("phc_x"));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["code"], "overloaded");
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(1), "answered at once, not queued");
    assert_eq!(holder.join().unwrap(), 200);
    let r = cap.post("/batch", "application/json", body(&unique("phc")));
    assert_eq!(r.status, 200, "{}", r.text);
}

/// A client that sends its body a byte at a time, never pausing long enough for the
/// chunk timeout, until the server answers or closes.
fn trickle(cap: &Capture, every: Duration) -> std::thread::JoinHandle<(String, Duration)> {
    let mut s = stalled_request(cap);
    std::thread::spawn(move || {
        let started = Instant::now();
        s.set_read_timeout(Some(every)).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while started.elapsed() < Duration::from_secs(20) {
            if s.write_all(b" ").is_err() {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&chunk[..n]);
                    break;
                }
                Err(_) => continue, // read timed out: nothing yet, trickle on
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    })
}

#[test]
fn trickling_clients_get_408_at_the_body_deadline_and_never_hold_a_slot() {
    let cap = Capture::start(
        "trickle",
        &[("MAX_CONCURRENT_REQUESTS", "2"), ("BODY_CHUNK_TIMEOUT_MS", "1000"), ("BODY_TIMEOUT_MS", "2500")],
    );
    let tricklers: Vec<_> = (0..8).map(|_| trickle(&cap, Duration::from_millis(200))).collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let token = unique("phc");
        let r = cap.post(
            "/batch",
            "application/json",
            json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]}).to_string(),
        );
        assert_eq!(r.status, 200, "served while 8 clients trickle into 2 slots: {}", r.text);
    }
    for t in tricklers {
        let (response, took) = t.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(took < Duration::from_secs(6), "held for {took:?}");
    }
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let cap = Capture::start("idle-h1", &[("IDLE_TIMEOUT_MS", "600")]);
    let mut s = TcpStream::connect(host_port(&cap)).unwrap();
    write!(s, "GET /_liveness HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // returns once capture closes the connection
    assert!(started.elapsed() < Duration::from_secs(5), "idle connection held for {:?}", started.elapsed());
}

#[test]
fn idle_http2_connections_are_closed() {
    let cap = Capture::start("idle-h2", &[("IDLE_TIMEOUT_MS", "600")]);
    let mut s = TcpStream::connect(host_port(&cap)).unwrap();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(5), "idle HTTP/2 connection held for {:?}", started.elapsed());
    assert!(frame_types(&got).contains(&7), "closed with GOAWAY: frames {:?}", frame_types(&got));
}

fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
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
