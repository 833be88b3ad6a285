//! Every route capture serves, read from capture's own route table (the one its router is
//! built from, so a route added later is covered here without editing this file): each
//! one answers, and every route that reads a body is sent every hostile kind of body at
//! once, as many as capture has request slots. Capture's memory stays under its ceiling
//! and every hostile body is answered 4xx or 503 with a JSON code.
//!
//! `HOSTILE_CONCURRENCY` (default 48) sets both the clients and `MAX_CONCURRENT_REQUESTS`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_tests::{base64, create_team, gzip, Capture};

const CEILING_BYTES: u64 = 256 << 20;
/// Decoded size of the bombs: under the decompressed limit (10 MiB), so each is read to
/// its end and its shape, not the limit, is what capture must survive.
const INFLATED: usize = 9 << 20;
/// Decoded size of the lz64 body.
const LZ64_INFLATED: usize = 1_500_000;
/// Size as received of the plain bodies: under the event routes' 2 MiB body limit.
const PLAIN: usize = 1_900_000;

/// One hostile kind: the bytes, and the headers and query that say how they are encoded.
struct Kind {
    name: &'static str,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
    query: &'static str,
    body: &'static [u8],
}

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

/// The shape: a valid token and a body wide enough to cost a tree of millions
/// of slots, for routes that only need the token.
fn wide(token: &str, bytes: usize) -> String {
    let head = format!("{{\"token\":\"{token}\",\"distinct_id\":\"d\",\"groups\":{{\"g\":[");
    let n = bytes.saturating_sub(head.len() + 4) / 2;
    format!("{head}{}0]}}}}", "0,".repeat(n))
}

fn zeros(bytes: usize) -> String {
    format!("[{}0]", "0,".repeat(bytes / 2))
}

fn deep(bytes: usize) -> String {
    let item = format!("{}0{},", "[".repeat(126), "]".repeat(126));
    format!("[{}0]", item.repeat(bytes / item.len()))
}

fn huge_string(bytes: usize) -> String {
    format!("[\"{}\"]", "x".repeat(bytes))
}

fn zstd(text: &str) -> Vec<u8> {
    zstd::encode_all(text.as_bytes(), 1).expect("zstd")
}

fn zlib(text: &str) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).expect("deflate");
    e.finish().expect("deflate")
}

fn kinds(token: &str) -> Vec<Kind> {
    let b64_zeros = base64(zeros(PLAIN * 3 / 4 - 16).as_bytes());
    vec![
        Kind {
            name: "gzip",
            content_type: "text/plain",
            content_encoding: None,
            query: "compression=gzip-js",
            body: leak(gzip(wide(token, INFLATED).as_bytes())),
        },
        Kind {
            name: "zstd",
            content_type: "application/json",
            content_encoding: Some("zstd"),
            query: "",
            body: leak(zstd(&wide(token, INFLATED))),
        },
        Kind {
            name: "deflate",
            content_type: "application/json",
            content_encoding: Some("deflate"),
            query: "",
            body: leak(zlib(&zeros(INFLATED))),
        },
        Kind {
            name: "lz64",
            content_type: "text/plain",
            content_encoding: None,
            query: "compression=lz64",
            // lz-string's reference compressor is slow (seconds per MB): a smaller body,
            // still past the flag routes' limit and a tree of 750,000 slots.
            body: leak(lz_str::compress_to_base64(&zeros(LZ64_INFLATED)).into_bytes()),
        },
        Kind {
            name: "base64",
            content_type: "text/plain",
            content_encoding: None,
            query: "compression=base64",
            body: leak(b64_zeros.clone().into_bytes()),
        },
        Kind {
            name: "form",
            content_type: "application/x-www-form-urlencoded",
            content_encoding: None,
            query: "",
            body: leak(format!("data={}", b64_zeros.replace('+', "%2B")).into_bytes()),
        },
        Kind {
            name: "deep nesting",
            content_type: "application/json",
            content_encoding: None,
            query: "",
            body: leak(deep(PLAIN).into_bytes()),
        },
        Kind {
            name: "wide array",
            content_type: "application/json",
            content_encoding: None,
            query: "",
            body: leak(wide(token, PLAIN).into_bytes()),
        },
        Kind {
            name: "huge string",
            content_type: "application/json",
            content_encoding: None,
            query: "",
            body: leak(gzip(huge_string(INFLATED).as_bytes())),
        },
    ]
}

#[test]
fn every_route_answers_and_every_body_route_refuses_every_hostile_kind_within_the_ceiling() {
    let concurrency: usize = std::env::var("HOSTILE_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let token = create_team("every-route");
    let cap = Capture::start("every_route", &[("MAX_CONCURRENT_REQUESTS", &concurrency.to_string())]);
    let routes = sluice_capture::routes();
    let client = sluice_tests::http();

    // The table is the router: every route answers on every method it lists.
    for route in &routes {
        let path = route.path.replace("{token}", &token);
        for method in &route.methods {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let status = client.request(method.clone(), format!("{}{path}", cap.url)).send().unwrap().status();
            assert!(status != 404 && status != 405, "{method} {path}: {status}");
        }
    }
    let body_routes: Vec<String> = routes.iter().filter(|r| r.reads_body).map(|r| r.path.clone()).collect();
    for known in ["/e", "/batch/", "/s", "/i/v1/analytics/events", "/flags", "/decide/", "/engage"] {
        assert!(body_routes.iter().any(|p| p == known), "{known} reads a body: {body_routes:?}");
    }

    let kinds = Arc::new(kinds(&token));
    let work: Vec<(String, usize)> =
        body_routes.iter().flat_map(|path| (0..kinds.len()).map(move |k| (path.clone(), k))).collect();
    let work = Arc::new(Mutex::new(work));
    let answers: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let baseline = sluice_tests::peak_rss(cap.child.id());
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, kinds, work, answers, refused) =
                (cap.url.clone(), kinds.clone(), work.clone(), answers.clone(), refused.clone());
            let token = token.clone();
            std::thread::spawn(move || {
                let client = sluice_tests::http();
                loop {
                    let Some((path, k)) = work.lock().unwrap().pop() else { break };
                    let kind = &kinds[k];
                    let sep = if kind.query.is_empty() { "" } else { "?" };
                    let mut request = client
                        .post(format!("{url}{path}{sep}{}", kind.query))
                        .header("content-type", kind.content_type)
                        .header("authorization", format!("Bearer {token}"))
                        .body(kind.body);
                    if let Some(encoding) = kind.content_encoding {
                        request = request.header("content-encoding", encoding);
                    }
                    let key = match request.send() {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().unwrap_or_default();
                            let code = body["code"].as_str().unwrap_or("-").to_string();
                            if !(400..500).contains(&status) && status != 503 || code == "-" {
                                refused.lock().unwrap().push(format!("{} to {path}: {status} {body}", kind.name));
                            }
                            format!("{}: {status} {code}", kind.name)
                        }
                        // Capture may answer 413/503 before the whole upload is sent.
                        Err(_) => format!("{}: connection closed early", kind.name),
                    };
                    *answers.lock().unwrap().entry(key).or_default() += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let peak = sluice_tests::peak_rss(cap.child.id());
    println!(
        "{} routes x {} kinds with {concurrency} clients in {:.1?}",
        body_routes.len(),
        kinds.len(),
        started.elapsed()
    );
    for (k, n) in answers.lock().unwrap().iter() {
        println!("  {k}: {n}");
    }
    println!("capture peak RSS {} MiB (baseline {} MiB)", peak >> 20, baseline >> 20);
    let refused = refused.lock().unwrap();
    assert!(refused.is_empty(), "hostile bodies not refused with a 4xx/503 and a code:\n{}", refused.join("\n"));
    assert!(peak <= CEILING_BYTES, "capture peaked at {} MiB", peak >> 20);

    // Whole afterwards, and the flag routes still read a token from an honest body.
    let body = serde_json::json!({"api_key": token, "batch": [{"event": "e", "distinct_id": "d"}]});
    assert_eq!(cap.post("/batch", "application/json", body.to_string()).status, 200);
    let flags = serde_json::json!({"token": token, "distinct_id": "d", "groups": {"company": "acme"}});
    let r = cap.post("/flags?v=2", "application/json", gzip(flags.to_string().as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["featureFlags"], serde_json::json!({}));
}
