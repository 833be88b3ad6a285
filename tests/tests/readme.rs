//! The README's "Your first event" commands, run as written against a running stack, so
//! the front door cannot rot. The only changes are where this test's stack lives: its
//! capture's port, its ClickHouse database, its Postgres database and the binaries of
//! this build instead of `./dev up`'s defaults.

use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::plugins::Database;
use sluice_tests::{bin_path, repo_root, Capture, Ingest};

/// The `sh` blocks of the README section headed `heading`, in order.
fn shell_blocks(readme: &str, heading: &str) -> Vec<String> {
    let section = readme.split(&format!("\n## {heading}\n")).nth(1).unwrap_or_else(|| panic!("no `## {heading}`"));
    let section = section.split("\n## ").next().unwrap_or_default();
    section.split("```sh\n").skip(1).map(|b| b.split("\n```").next().unwrap_or_default().to_string()).collect()
}

/// Runs `block` in bash; its stdout, or its stderr on failure.
fn run(block: &str) -> Result<String, String> {
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", block]).output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs `block` until its output contains `wanted` (the pipeline takes a moment).
fn run_until(block: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(block);
        if let Ok(text) = &out {
            if text.contains(wanted) {
                return text.clone();
            }
        }
        assert!(Instant::now() < deadline, "`{block}` never printed {wanted:?}; last: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_readme_first_event_commands_work_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let blocks = shell_blocks(&readme, "Your first event");
    assert_eq!(blocks.len(), 3, "send, see the row, see the person: {blocks:#?}");

    let db = Database::create("readme");
    db.run(&["migrate"]);
    db.team("Default team");
    let cap = Capture::start("readme", &[]);
    let ingest = Ingest::start("readme", &cap.topics.main, &db.env());
    let bin_dir = bin_path("sluice-ingest").parent().expect("a folder").display().to_string();
    let capture_address = cap.url.trim_start_matches("http://").to_string();
    let events_table = ingest.table("events");
    let here = |block: &str| {
        block
            .replace("~/.cache/sluice/target/release", &bin_dir)
            .replace("127.0.0.1:3000", &capture_address)
            .replace("sluice.events", &events_table)
            .replace("postgres://postgres@127.0.0.1:5432/sluice", &db.url)
    };
    // `teams list` reads DATABASE_URL, as `./dev up` exports it.
    let send = format!("export DATABASE_URL='{}'\n{}", db.url, here(&blocks[0]));
    let sent = run(&send).unwrap_or_else(|e| panic!("{send}\n{e}"));
    assert!(sent.contains(r#"{"status":"Ok"}"#), "{sent}");

    let row = run_until(&here(&blocks[1]), "signed_up");
    for expected in ["distinct_id: user-1", r#""plan":"pro""#, r#""$browser":"Firefox""#, "person_id:"] {
        assert!(row.contains(expected), "{expected} not in:\n{row}");
    }
    let person = run_until(&here(&blocks[2]), "Firefox");
    assert!(person.contains(r#""$initial_browser": "Firefox""#), "{person}");
}
