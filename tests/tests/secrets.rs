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
        .env("CLICKHOUSE_PASSWORD", SECRET)
        .env("KAFKA_SASL_PASSWORD", SECRET)
        .env("KAFKA_SSL_KEY_PASSWORD", SECRET)
        .output()
        .expect("run the binary");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_lists_the_settings_without_their_secret_values() {
    for bin in ["sluice-capture", "sluice-ingest"] {
        let help = run(bin, &["--help"]);
        assert!(help.contains("DATABASE_URL") && help.contains("REDIS_URL"), "{bin}: {help}");
        for setting in ["KAFKA_SASL_PASSWORD", "KAFKA_SECURITY_PROTOCOL", "REDIS_TLS_CA_FILE", "DATABASE_URL_FILE"] {
            assert!(help.contains(setting), "{bin} --help does not list {setting}");
        }
        assert!(!help.contains(SECRET), "{bin} --help printed a password:\n{help}");
    }
}

#[test]
fn connection_errors_name_the_setting_without_its_password() {
    let out = run("sluice-ingest", &["migrate"]);
    assert!(out.contains("DATABASE_URL=postgres://sluice:***@127.0.0.1"), "{out}");
    assert!(!out.contains(SECRET), "the error printed a password:\n{out}");
}

/// Every secret setting planted, some through `*_FILE`, while both binaries start against
/// the local servers and fail to authenticate to one (ClickHouse's default user has no
/// password): nothing they log or export carries a secret.
#[test]
fn start_up_logs_and_metrics_carry_no_secret() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("secret-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };
    let database_url = sluice_tests::database_url().replace("postgres@", &format!("postgres:{SECRET}@"));
    let env = [
        ("DATABASE_URL_FILE", file("database-url", &database_url)),
        ("REDIS_URL", sluice_tests::redis_url().replace("redis://", &format!("redis://default:{SECRET}@"))),
        ("CLICKHOUSE_USER", "default".into()),
        ("CLICKHOUSE_PASSWORD_FILE", file("clickhouse-password", SECRET)),
        ("TEAM_TOKEN_CHECK", "true".into()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "debug".into()),
    ];
    for bin in ["sluice-capture", "sluice-ingest"] {
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{bin}.log"));
        let mut child = Command::new(bin_path(bin))
            .env_remove("DATABASE_URL")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ADDRESS", &address)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{bin}.err"))).unwrap())
            .spawn()
            .expect("start");
        std::thread::sleep(std::time::Duration::from_secs(4));
        let metrics = sluice_tests::http().get(format!("http://{address}/metrics")).send().map(|r| r.text().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        let output =
            std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(dir.join(format!("{bin}.err"))).unwrap();
        let metrics = metrics.unwrap_or_else(|e| panic!("{bin} /metrics: {e}\n{output}"));
        assert!(output.lines().count() > 2, "{bin} logged at debug level:\n{output}");
        assert!(!output.contains(SECRET), "{bin} logged a secret:\n{output}");
        assert!(!metrics.contains(SECRET), "{bin} exported a secret:\n{metrics}");
        if bin == "sluice-ingest" {
            assert!(output.contains("Wrong password"), "ClickHouse refused the planted password:\n{output}");
        }
    }
    // A setting refused at start-up does not print its neighbours' secrets either.
    let out = Command::new(bin_path("sluice-capture"))
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_PASSWORD", SECRET)
        .env("ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("KAFKA_SASL_MECHANISM") && !text.contains(SECRET), "{text}");
}
