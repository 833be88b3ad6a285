//! `sluice-plugin`: for plugin authors (`run`, `test`), and the worker process ingest
//! starts (`worker`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use sluice_plugin_runtime::{open_geoip, GeoIp, Host, KeyValue, Limits, PluginSource, Vm};

#[derive(Parser)]
#[command(name = "sluice-plugin", version, about = "Run and test Sluice plugins.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a plugin's process_event on one event and print the result (or `dropped`).
    Run {
        /// The plugin's folder (plugin.json, main.lua).
        dir: PathBuf,
        /// A JSON file holding the event.
        #[arg(long)]
        event: PathBuf,
        /// Configuration, repeated: key=value.
        #[arg(long = "config", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// A MaxMind City database for ctx.geoip.
        #[arg(long, env = "SLUICE_PLUGIN_GEOIP_DATABASE")]
        geoip: Option<PathBuf>,
    },
    /// Run a plugin's test.lua (functions named test_*) and fixtures/*.json (an input
    /// event and the expected output, or null for a drop); non-zero exit on failure.
    /// test.lua runs with the settings of test_config.json, if present. Cache and
    /// storage are in memory; http requests are recorded, never sent.
    Test {
        dir: PathBuf,
        /// Configuration, repeated: key=value (fixtures may carry their own `config`).
        #[arg(long = "config", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// A MaxMind City database for ctx.geoip.
        #[arg(long, env = "SLUICE_PLUGIN_GEOIP_DATABASE")]
        geoip: Option<PathBuf>,
    },
    /// Serve plugin VMs over stdin/stdout for a supervisor (ingest).
    #[command(hide = true)]
    Worker,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not key=value"))
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Worker => sluice_plugin_runtime::worker::serve().await.map_err(|e| e.to_string()),
            Command::Run { dir, event, config, geoip } => match geoip_db(geoip) {
                Ok(db) => run(dir, event, config, db).await,
                Err(e) => Err(e),
            },
            Command::Test { dir, config, geoip } => match geoip_db(geoip) {
                Ok(db) => test(dir, config, db).await,
                Err(e) => Err(e),
            },
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn geoip_db(path: Option<PathBuf>) -> Result<Option<GeoIp>, String> {
    path.map(|p| open_geoip(&p)).transpose()
}

/// A fresh VM with in-memory cache and storage and stubbed http.
async fn test_vm(source: &PluginSource, given: &Map<String, Value>, geoip: &Option<GeoIp>) -> Result<Vm, String> {
    let config = source.manifest.validate_config(given).map_err(|e| e.to_string())?;
    let kv = KeyValue::memory(10_000);
    let host = Host::with_http_stub(kv.namespaced("cache/"), kv.namespaced("storage/")).with_geoip(geoip.clone());
    Vm::new(source, &config, Limits::default(), host).await.map_err(|e| e.to_string())
}

async fn test(dir: PathBuf, config: Vec<(String, String)>, geoip: Option<GeoIp>) -> Result<(), String> {
    let source = PluginSource::from_dir(&dir).map_err(|e| e.to_string())?;
    let given: Map<String, Value> = config.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let (mut passed, mut failed) = (0, 0);
    let mut report = |name: &str, result: Result<(), String>| match result {
        Ok(()) => {
            passed += 1;
            println!("ok    {name}");
        }
        Err(e) => {
            failed += 1;
            println!("FAIL  {name}: {e}");
        }
    };
    if let Ok(tests) = std::fs::read_to_string(dir.join("test.lua")) {
        // test.lua runs with test_config.json (if any) under the --config values.
        let mut config: Map<String, Value> = match std::fs::read_to_string(dir.join("test_config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("test_config.json: {e}"))?,
            Err(_) => Map::new(),
        };
        config.extend(given.clone());
        let vm = test_vm(&source, &config, &geoip).await?;
        for (name, result) in vm.run_tests(&tests).await.map_err(|e| e.to_string())? {
            report(&format!("test.lua {name}"), result);
        }
    }
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir.join("fixtures"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default();
    fixtures.sort();
    for path in fixtures {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        report(&name, fixture(&source, &given, &path, &geoip).await);
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        return Err(if passed == 0 {
            "no tests found (test.lua, fixtures/*.json)".into()
        } else {
            format!("{failed} failed")
        });
    }
    Ok(())
}

/// `{"event": {...}, "expected": {...} | null, "config": {...}}`.
async fn fixture(
    source: &PluginSource,
    given: &Map<String, Value>,
    path: &std::path::Path,
    geoip: &Option<GeoIp>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let f: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let mut config = given.clone();
    if let Some(c) = f.get("config").and_then(Value::as_object) {
        config.extend(c.clone());
    }
    let vm = test_vm(source, &config, geoip).await?;
    let input = f.get("event").ok_or("no `event`")?;
    let expected = f.get("expected").ok_or("no `expected` (null for a drop)")?;
    let out = vm.process_event(input).await.map_err(|e| e.to_string())?;
    let got = out.unwrap_or(Value::Null);
    if same(&got, expected) {
        Ok(())
    } else {
        Err(format!("expected {expected}, got {got}"))
    }
}

/// JSON equality, with numbers compared by value (Luau has one number type: 22 and 22.0
/// are the same).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

async fn run(dir: PathBuf, event: PathBuf, config: Vec<(String, String)>, geoip: Option<GeoIp>) -> Result<(), String> {
    let source = PluginSource::from_dir(&dir).map_err(|e| e.to_string())?;
    let given: Map<String, Value> = config.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let config = source.manifest.validate_config(&given).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&event).map_err(|e| format!("{}: {e}", event.display()))?;
    let event: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", event.display()))?;
    let kv = KeyValue::memory(10_000);
    let host = Host::new(kv.namespaced("cache/"), kv.namespaced("storage/")).with_geoip(geoip);
    let vm = Vm::new(&source, &config, Limits::default(), host).await.map_err(|e| e.to_string())?;
    let result = vm.process_event(&event).await;
    for log in vm.take_logs() {
        eprintln!("[{}] {}", log.level, log.message);
    }
    match result.map_err(|e| e.to_string())? {
        Some(e) => println!("{}", serde_json::to_string_pretty(&e).expect("JSON values serialize")),
        None => println!("dropped"),
    }
    Ok(())
}
