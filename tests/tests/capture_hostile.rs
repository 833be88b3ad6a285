//! Hostile bodies of every kind, as many at once as capture has request slots, while an
//! honest client keeps sending: capture's memory stays under its ceiling, every hostile
//! request is answered 4xx/503 with a code, and the honest events all get in.
//!
//! `HOSTILE_CONCURRENCY` (default 48) sets both the number of hostile clients and
//! capture's `MAX_CONCURRENT_REQUESTS`; `SLUICE_BIN_DIR` points at a release build for
//! the figures in docs/operations.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{base64, gzip, unique, Capture};

const CEILING_BYTES: u64 = 256 << 20;

/// `n` gzip members of the same compressed text: a 100 KB body that inflates to
/// `n` times `member`.
fn gzip_members(head: &str, member: &str, n: usize, tail: &str) -> Vec<u8> {
    let one = gzip(member.as_bytes());
    let mut out = gzip(head.as_bytes());
    for _ in 0..n {
        out.extend_from_slice(&one);
    }
    out.extend(gzip(tail.as_bytes()));
    out
}

struct Attack {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    query: &'static str,
    /// Leaked: every request sends the same bytes without copying them.
    body: &'static [u8],
}

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

fn attacks() -> Vec<Attack> {
    let zeros_1mib = "0,".repeat(512 * 1024);
    let one_key_objects = "{\"a\":0},".repeat(128 * 1024);
    let deep_item = format!("{}0{},", "[".repeat(126), "]".repeat(126));
    let deep = format!("[{}0]", deep_item.repeat((1_900_000) / deep_item.len()));
    let zeros_text = format!("[{}0]", "0,".repeat(700_000));
    vec![
        // 99 MiB of `[0,0,…]` from ~100 KB: past the decompressed limit.
        Attack {
            name: "gzip bomb 99 MiB",
            path: "/batch",
            content_type: "application/json",
            query: "",
            body: leak(gzip_members("[", &zeros_1mib, 99, "0]")),
        },
        // Just under the decompressed limit, but a tree of 5 million slots.
        Attack {
            name: "gzip 9 MiB of zeros",
            path: "/batch",
            content_type: "application/json",
            query: "",
            body: leak(gzip_members("[", &zeros_1mib, 9, "0]")),
        },
        // One B-tree node per 8 bytes of text.
        Attack {
            name: "gzip 9 MiB of one-key objects",
            path: "/batch",
            content_type: "application/json",
            query: "",
            body: leak(gzip_members("[", &one_key_objects, 9, "{}]")),
        },
        Attack {
            name: "lz64 bomb",
            path: "/e",
            content_type: "text/plain",
            query: "compression=lz64",
            // 3 MB: lz-string's reference compressor takes seconds per MB (the decoder's
            // limit is held by capture's unit tests).
            body: leak(lz_str::compress_to_base64(&format!("[{}0]", "0,".repeat(1_500_000))).into_bytes()),
        },
        Attack {
            name: "base64 zeros",
            path: "/e",
            content_type: "text/plain",
            query: "compression=base64",
            body: leak(base64(zeros_text.as_bytes()).into_bytes()),
        },
        Attack {
            name: "form zeros",
            path: "/e",
            content_type: "application/x-www-form-urlencoded",
            query: "",
            body: leak(format!("data={}", base64(zeros_text.as_bytes())).replace('+', "%2B").into_bytes()),
        },
        Attack {
            name: "deep nesting",
            path: "/e",
            content_type: "application/json",
            query: "",
            body: leak(deep.into_bytes()),
        },
        // 20 MiB as received, the /batch body limit.
        Attack {
            name: "20 MiB plain body",
            path: "/batch",
            content_type: "application/json",
            query: "",
            body: leak(format!("[{}0]", "0,".repeat(10 * 1024 * 1024 - 2)).into_bytes()),
        },
    ]
}

#[test]
fn hostile_bodies_at_the_concurrency_limit_stay_under_the_memory_ceiling() {
    let concurrency: usize = std::env::var("HOSTILE_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let rounds: usize = std::env::var("HOSTILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cap = Capture::start("hostile", &[("MAX_CONCURRENT_REQUESTS", &concurrency.to_string())]);
    let baseline = sluice_tests::peak_rss(cap.child.id());
    let attacks = Arc::new(attacks());
    let answers: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let flooding = Arc::new(AtomicBool::new(true));

    // The honest client: small batches, retried on 503 as the SDKs do.
    let honest = {
        let (url, flooding) = (cap.url.clone(), flooding.clone());
        std::thread::spawn(move || {
            let client = sluice_tests::http();
            let token = unique("phc");
            let (mut accepted, mut busy) = (0usize, 0usize);
            let mut i = 0;
            while flooding.load(Ordering::Relaxed) || i < 5 {
                let body = json!({"api_key": token, "batch": [{"event": "honest", "distinct_id": format!("u{i}")}]});
                let started = Instant::now();
                loop {
                    let status = client.post(format!("{url}/batch")).body(body.to_string()).send().unwrap().status();
                    if status == 200 {
                        accepted += 1;
                        break;
                    }
                    assert_eq!(status, 503, "an honest batch was refused");
                    busy += 1;
                    assert!(started.elapsed() < Duration::from_secs(60), "an honest batch never got in");
                    std::thread::sleep(Duration::from_millis(50));
                }
                i += 1;
            }
            (accepted, busy)
        })
    };

    let started = Instant::now();
    let attackers: Vec<_> = (0..concurrency)
        .map(|t| {
            let (url, attacks, answers) = (cap.url.clone(), attacks.clone(), answers.clone());
            std::thread::spawn(move || {
                let client = sluice_tests::http();
                for round in 0..rounds {
                    for k in 0..attacks.len() {
                        let a = &attacks[(t + k + round) % attacks.len()];
                        let sep = if a.query.is_empty() { "" } else { "?" };
                        let r = client
                            .post(format!("{url}{}{sep}{}", a.path, a.query))
                            .header("content-type", a.content_type)
                            .body(a.body)
                            .send();
                        let key = match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body: serde_json::Value = r.json().unwrap_or_default();
                                format!("{}: {status} {}", a.name, body["code"].as_str().unwrap_or("-"))
                            }
                            // Capture may answer 413/503 before the whole upload is sent.
                            Err(_) => format!("{}: connection closed early", a.name),
                        };
                        *answers.lock().unwrap().entry(key).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for a in attackers {
        a.join().unwrap();
    }
    let took = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let (accepted, busy) = honest.join().unwrap();
    let peak = sluice_tests::peak_rss(cap.child.id());

    let answers = answers.lock().unwrap();
    println!("{concurrency} hostile clients x {rounds} rounds of {} kinds in {took:.1?}", attacks.len());
    for (k, n) in answers.iter() {
        println!("  {k}: {n}");
    }
    println!(
        "honest batches: {accepted} accepted ({busy} retries after 503); capture peak RSS {} MiB (baseline {} MiB)",
        peak >> 20,
        baseline >> 20
    );
    for k in answers.keys() {
        assert!(!k.contains(": 200 "), "a hostile body was accepted: {k}");
        assert!(!k.contains(": 500 "), "{k}");
    }
    assert!(accepted >= 5);
    assert!(peak <= CEILING_BYTES, "capture peaked at {} MiB", peak >> 20);
    // Capture is still whole.
    let body = json!({"api_key": unique("phc"), "batch": [{"event": "e", "distinct_id": "d"}]});
    let r = cap.post("/batch", "application/json", body.to_string());
    assert_eq!(r.status, 200, "{}", r.text);
}
