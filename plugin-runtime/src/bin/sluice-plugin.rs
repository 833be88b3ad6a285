//! `sluice-plugin`: for plugin authors (`run`, `test`), and the worker process ingest
//! starts (`worker`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use sluice_plugin_runtime::{Host, KeyValue, Limits, PluginSource, Vm};

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
            Command::Run { dir, event, config } => run(dir, event, config).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(dir: PathBuf, event: PathBuf, config: Vec<(String, String)>) -> Result<(), String> {
    let source = PluginSource::from_dir(&dir).map_err(|e| e.to_string())?;
    let given: Map<String, Value> = config.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let config = source.manifest.validate_config(&given).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&event).map_err(|e| format!("{}: {e}", event.display()))?;
    let event: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", event.display()))?;
    let kv = KeyValue::memory(10_000);
    let vm =
        Vm::new(&source, &config, Limits::default(), Host::new(kv.namespaced("cache/"), kv.namespaced("storage/")))
            .await
            .map_err(|e| e.to_string())?;
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
