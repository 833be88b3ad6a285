//! Credentials in settings are never printed: not by `--help`, not in an error.

use std::process::Command;

use sluice_tests::{bin_path, free_port};

const SECRET: &str = "SECRETPW-4242";

fn run(bin: &str, args: &[&str]) -> String {
    let port = free_port();
    let out = Command::new(bin_path(bin))
        .args(args)
        .env("DATABASE_URL", format!("postgres://sluice:{SECRET}@127.0.0.1:{port}/sluice"))
        .env("REDIS_URL", format!("redis://default:{SECRET}@127.0.0.1:{port}"))
        .env("CLICKHOUSE_URL", format!("http://sluice:{SECRET}@127.0.0.1:{port}"))
        .output()
        .expect("run the binary");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_lists_the_settings_without_their_secret_values() {
    for bin in ["sluice-capture", "sluice-ingest"] {
        let help = run(bin, &["--help"]);
        assert!(help.contains("DATABASE_URL") && help.contains("REDIS_URL"), "{bin}: {help}");
        assert!(!help.contains(SECRET), "{bin} --help printed a password:\n{help}");
    }
}

#[test]
fn connection_errors_name_the_setting_without_its_password() {
    let out = run("sluice-ingest", &["migrate"]);
    assert!(out.contains("DATABASE_URL=postgres://sluice:***@127.0.0.1"), "{out}");
    assert!(!out.contains(SECRET), "the error printed a password:\n{out}");
}
