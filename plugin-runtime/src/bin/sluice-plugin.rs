//! `sluice-plugin`: for plugin authors (`run`, `test`, see `authoring`), and the worker
//! process ingest starts (`worker`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use sluice_common::settings::key_value;
use sluice_plugin_runtime::{
    open_geoip, run_plugin, test_plugin, Attachment, LimitSettings, Workbench, ATTACHMENT_MAX_BYTES,
};

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
        #[arg(long = "config", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// A MaxMind City database for ctx.geoip.
        #[arg(long, env = "SLUICE_PLUGIN_GEOIP_DATABASE")]
        geoip: Option<PathBuf>,
        /// A file for ctx.attachments, repeated: key=path (as `sluice-ingest plugins
        /// attach` uploads it, within the same size limit).
        #[arg(long = "attach", value_parser = key_value)]
        attach: Vec<(String, String)>,
        #[command(flatten)]
        limits: LimitSettings,
    },
    /// Print the Luau type definitions of what Sluice hands a plugin (events, ctx), for
    /// editors and luau-analyze; the same as plugin-runtime/types/sluice.d.luau.
    Types,
    /// Run a plugin's test.lua (functions named test_*) and fixtures/*.json (an input
    /// event and the expected output, or null for a drop); non-zero exit on failure.
    /// test.lua runs with the settings of test_config.json, if present. Cache and
    /// storage are in memory; http requests are recorded, never sent.
    Test {
        dir: PathBuf,
        /// Configuration, repeated: key=value (fixtures may carry their own `config`).
        #[arg(long = "config", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// A MaxMind City database for ctx.geoip.
        #[arg(long, env = "SLUICE_PLUGIN_GEOIP_DATABASE")]
        geoip: Option<PathBuf>,
        /// A file for ctx.attachments, repeated: key=path (as `sluice-ingest plugins
        /// attach` uploads it, within the same size limit).
        #[arg(long = "attach", value_parser = key_value)]
        attach: Vec<(String, String)>,
        #[command(flatten)]
        limits: LimitSettings,
    },
    /// Serve plugin VMs over stdin/stdout for a supervisor (ingest).
    #[command(hide = true)]
    Worker,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Worker => sluice_plugin_runtime::serve_worker().await.map_err(|e| e.to_string()),
            Command::Types => {
                print!("{}", sluice_plugin_runtime::luau_definitions());
                Ok(())
            }
            Command::Run { dir, event, config, geoip, attach, limits } => {
                match workbench(false, geoip, &attach, &limits) {
                    Ok(bench) => {
                        let result = run(&bench, dir, event, config).await;
                        bench.shutdown().await;
                        result
                    }
                    Err(e) => Err(e),
                }
            }
            Command::Test { dir, config, geoip, attach, limits } => match workbench(true, geoip, &attach, &limits) {
                Ok(bench) => {
                    let result = test(&bench, dir, config).await;
                    bench.shutdown().await;
                    result
                }
                Err(e) => Err(e),
            },
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Plugins run in a worker process of this same program, as ingest runs them.
fn workbench(
    http_stub: bool,
    geoip: Option<PathBuf>,
    attach: &[(String, String)],
    limits: &LimitSettings,
) -> Result<Workbench, String> {
    if let Some(path) = &geoip {
        open_geoip(path)?;
    }
    let files = attach
        .iter()
        .map(|(key, path)| Attachment::from_file(key, std::path::Path::new(path), None, ATTACHMENT_MAX_BYTES))
        .collect::<Result<Vec<_>, _>>()?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program to start its worker: {e}"))?;
    Ok(Workbench::new(&me, http_stub, geoip.as_deref(), limits).with_attachments(files))
}

fn given(config: Vec<(String, String)>) -> Map<String, Value> {
    config.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
}

async fn test(bench: &Workbench, dir: PathBuf, config: Vec<(String, String)>) -> Result<(), String> {
    let results = test_plugin(bench, &dir, &given(config)).await?;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    for (name, result) in &results {
        match result {
            Ok(()) => println!("ok    {name}"),
            Err(e) => println!("FAIL  {name}: {e}"),
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if results.is_empty() {
        return Err("no tests found (test.lua, fixtures/*.json)".into());
    }
    if failed > 0 {
        return Err(format!("{failed} failed"));
    }
    Ok(())
}

async fn run(bench: &Workbench, dir: PathBuf, event: PathBuf, config: Vec<(String, String)>) -> Result<(), String> {
    let text = std::fs::read_to_string(&event).map_err(|e| format!("{}: {e}", event.display()))?;
    let event: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", event.display()))?;
    let (result, logs) = run_plugin(bench, &dir, &event, &given(config)).await?;
    for log in logs {
        eprintln!("[{}] {}", log.level, log.message);
    }
    match result? {
        Some(e) => println!("{}", serde_json::to_string_pretty(&e).expect("JSON values serialize")),
        None => println!("dropped"),
    }
    Ok(())
}
