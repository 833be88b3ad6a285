//! What plugin authors run on their machine (`sluice-plugin test` and `run`): a plugin's
//! `test.lua` and `fixtures/*.json`, and one event through `process_event`, in a worker
//! process under a supervisor with production's limits ([`Workbench`]), cache and
//! storage in the worker's memory within production's quotas, and (for `test`) an http
//! that records instead of sending.

use std::path::Path;
use std::sync::Arc;

use mlua::{ChunkMode, Function, LuaSerdeExt, Value as LuaValue};
use serde_json::{Map, Value};

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::hook::{Hook, PluginConfigId, PluginError, TeamId};
use crate::host::{Attachment, LogEntry};
use crate::limits::{LimitSettings, Limits};
use crate::manifest::PluginSource;
use crate::protocol::{Instance, TestResult};
use crate::sandbox::{classify, Spent, Vm};
use crate::supervisor::{Settings as SupervisorSettings, Supervisor};
use crate::worker::WorkerEnv;

impl Vm {
    /// Runs an author's `test.lua` against this plugin: its `test_*` functions, in name
    /// order, each under the hook limits. In scope: `plugin` (the hooks table), `ctx`,
    /// `process_event(event)` (the plugin's, exactly as production calls it: its own time
    /// and tick limits, the output checks, the same error texts), `http_requests()` (what
    /// the stubbed http received), `captured_events()` (what `ctx.capture` sent),
    /// `started_jobs()` (what `ctx.jobs` started; run one with `plugin.jobs.<name>(payload, ctx)`).
    pub async fn run_tests(self: &Arc<Self>, test_source: &str) -> Result<Vec<TestResult>, PluginError> {
        let compile = |e: mlua::Error| PluginError::Compile(format!("test.lua: {e}"));
        let env = self.lua.create_table().map_err(compile)?;
        let meta = self.lua.create_table().map_err(compile)?;
        meta.raw_set("__index", self.lua.globals()).map_err(compile)?;
        env.set_metatable(Some(meta)).map_err(compile)?;
        env.raw_set("plugin", self.plugin.clone()).map_err(compile)?;
        env.raw_set("ctx", self.ctx.clone()).map_err(compile)?;
        // Weak: the function lives in the VM, which must not keep itself alive.
        let vm = Arc::downgrade(self);
        let process = self
            .lua
            .create_async_function(move |lua, event: LuaValue| {
                let vm = vm.clone();
                async move {
                    let Some(vm) = vm.upgrade() else { return Err(mlua::Error::runtime("the plugin is unloaded")) };
                    let event: Value = lua.from_value(event)?;
                    // The test's own clock stops for the call and goes on after it.
                    let left = vm.guard.left();
                    let out = vm.process_event(&event).await;
                    vm.guard.arm(left.unwrap_or(vm.limits.hook_wall), vm.limits.hook_ticks);
                    match out {
                        Ok(Some(out)) => lua.to_value(&out),
                        Ok(None) => Ok(LuaValue::Nil),
                        Err(e) => Err(mlua::Error::runtime(e.to_string())),
                    }
                }
            })
            .map_err(compile)?;
        env.raw_set("process_event", process).map_err(compile)?;
        let host = self.host.clone();
        let requests = self
            .lua
            .create_function(move |lua, ()| lua.to_value(&Value::Array(host.stubbed_requests())))
            .map_err(compile)?;
        env.raw_set("http_requests", requests).map_err(compile)?;
        // What the plugin sent with ctx.capture since the last look, under production's
        // quotas (tests call hooks directly, so ctx.capture is allowed anywhere here).
        self.host.start_testing();
        let host = self.host.clone();
        let captured = self
            .lua
            .create_function(move |lua, ()| lua.to_value(&Value::Array(host.take_captured())))
            .map_err(compile)?;
        env.raw_set("captured_events", captured).map_err(compile)?;
        // The jobs the plugin started since the last look: {name, payload, run_at_ms}.
        let host = self.host.clone();
        let started = self
            .lua
            .create_function(move |lua, ()| {
                let jobs: Vec<Value> = host
                    .started_jobs()
                    .into_iter()
                    .map(|j| {
                        let payload = serde_json::from_str(&j.payload).unwrap_or(Value::Null);
                        serde_json::json!({"name": j.name, "payload": payload, "run_at_ms": j.run_at_ms})
                    })
                    .collect();
                lua.to_value(&Value::Array(jobs))
            })
            .map_err(compile)?;
        env.raw_set("started_jobs", started).map_err(compile)?;
        self.lua
            .load(test_source)
            .set_name("=test.lua")
            .set_mode(ChunkMode::Text)
            .set_environment(env.clone())
            .exec_async()
            .await
            .map_err(compile)?;
        let mut tests: Vec<(String, Function)> = env
            .pairs::<String, LuaValue>()
            .flatten()
            .filter_map(|(k, v)| match v {
                LuaValue::Function(f) if k.starts_with("test_") => Some((k, f)),
                _ => None,
            })
            .collect();
        tests.sort_by(|a, b| a.0.cmp(&b.0));
        let mut results = Vec::new();
        for (name, f) in tests {
            self.guard.arm(self.limits.hook_wall, self.limits.hook_ticks);
            let started = std::time::Instant::now();
            let r = f.call_async::<()>(()).await;
            let hit =
                self.guard.hit().map(|h| (h, Spent::since(self.limits.hook_wall, self.limits.hook_ticks, started)));
            self.guard.disarm();
            results.push((
                name,
                r.map_err(|e| match classify(Hook::Setup, e, hit, &self.limits) {
                    PluginError::Failed { message, .. } => message,
                    other => other.to_string(),
                }),
            ));
        }
        Ok(results)
    }
}

/// Where an author's plugin runs: a worker process under a supervisor, as in ingest, with
/// the operator's limit settings (`PLUGIN_*`, the same variables and defaults as
/// ingest's), store quotas and watchdog. What a plugin does wrong on
/// an author's machine then fails here as it fails in production, with the same words:
/// nothing of the sandbox is set up twice.
pub struct Workbench {
    supervisor: Supervisor,
    limits: Limits,
    next_id: AtomicI64,
    /// `--attach key=file`: what `ctx.attachments` holds.
    attachments: Vec<Attachment>,
}

/// The team an author's plugins run for.
const TEAM: TeamId = TeamId(1);

impl Workbench {
    /// `worker`: the program whose `worker` subcommand serves VMs (`sluice-plugin`).
    /// `http_stub`: `ctx.http.fetch` records requests instead of sending them.
    /// `geoip`: a MaxMind City database for `ctx.geoip`.
    pub fn new(worker: &Path, http_stub: bool, geoip: Option<&Path>, settings: &LimitSettings) -> Workbench {
        let limits = settings.limits();
        let env = WorkerEnv { geoip_database: geoip.map(|p| p.display().to_string()), http_stub, ..Default::default() };
        let supervisor = Supervisor::new(SupervisorSettings::production(
            worker.to_path_buf(),
            vec!["worker".into()],
            env.to_vars(),
            1,
            settings,
        ));
        Workbench { supervisor, limits, next_id: AtomicI64::new(1), attachments: Vec::new() }
    }

    /// Plugins loaded from now on get these files as `ctx.attachments`.
    pub fn with_attachments(mut self, files: Vec<Attachment>) -> Workbench {
        self.attachments = files;
        self
    }

    /// Loads `source` with `given` settings (checked against its manifest) as a new
    /// plugin configuration.
    async fn load(&self, source: &PluginSource, given: &Map<String, Value>) -> Result<PluginConfigId, String> {
        let config = source.manifest.validate_config(given).map_err(|e| e.to_string())?;
        let id = PluginConfigId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let instance = Instance {
            id,
            source: source.clone(),
            config,
            limits: self.limits.clone(),
            attachments: self.attachments.clone(),
        };
        self.supervisor.load(TEAM, instance).await.map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// One event through `process_event`, as ingest runs it: the output (`None`:
    /// dropped), or how the call failed (its error, or the strike when its worker died),
    /// and what it logged.
    async fn process(&self, id: PluginConfigId, event: &Value) -> (Result<Option<Value>, String>, Vec<LogEntry>) {
        let run = self.supervisor.process(TEAM, &[id], vec![event.clone()]).await;
        let logs = run.output.logs.into_iter().map(|(_, entry)| entry).collect();
        if let Some(strike) = run.strikes.into_iter().next() {
            return (Err(strike.reason), logs);
        }
        if let Some((_, _, error)) = run.output.errors.into_iter().next() {
            return (Err(error.to_string()), logs);
        }
        let event = run.output.events.into_iter().next().and_then(|p| p.event);
        (Ok(event), logs)
    }

    pub async fn shutdown(&self) {
        self.supervisor.shutdown(Duration::from_secs(5)).await;
    }
}

/// Runs a plugin's tests: `test.lua` (with `test_config.json` under the `given`
/// values), then each fixture (`{"event", "expected" | null, "config"}`), in name order,
/// on `bench` (http recorded, never sent).
pub async fn test_plugin(bench: &Workbench, dir: &Path, given: &Map<String, Value>) -> Result<Vec<TestResult>, String> {
    let source = PluginSource::from_dir(dir).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    if let Ok(tests) = std::fs::read_to_string(dir.join("test.lua")) {
        let mut config: Map<String, Value> = match std::fs::read_to_string(dir.join("test_config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("test_config.json: {e}"))?,
            Err(_) => Map::new(),
        };
        config.extend(given.clone());
        let id = bench.load(&source, &config).await?;
        match bench.supervisor.run_tests(TEAM, id, &tests).await {
            Ok(ran) => results.extend(ran.into_iter().map(|(name, r)| (format!("test.lua {name}"), r))),
            Err(e) => results.push(("test.lua".into(), Err(e.to_string()))),
        }
        bench.supervisor.unload(TEAM, id).await;
    }
    let mut fixtures: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("fixtures"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default();
    fixtures.sort();
    for path in fixtures {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        results.push((name, fixture(bench, &source, given, &path).await));
    }
    Ok(results)
}

/// One event through the plugin's `process_event` on `bench`: its output (`None`:
/// dropped) or why it failed, and what it logged.
pub async fn run_plugin(
    bench: &Workbench,
    dir: &Path,
    event: &Value,
    given: &Map<String, Value>,
) -> Result<(Result<Option<Value>, String>, Vec<LogEntry>), String> {
    let source = PluginSource::from_dir(dir).map_err(|e| e.to_string())?;
    let id = bench.load(&source, given).await?;
    Ok(bench.process(id, event).await)
}

async fn fixture(
    bench: &Workbench,
    source: &PluginSource,
    given: &Map<String, Value>,
    path: &Path,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let f: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let mut config = given.clone();
    if let Some(c) = f.get("config").and_then(Value::as_object) {
        config.extend(c.clone());
    }
    let input = f.get("event").ok_or("no `event`")?;
    let expected = f.get("expected").ok_or("no `expected` (null for a drop)")?;
    let id = bench.load(source, &config).await?;
    let (got, _) = bench.process(id, input).await;
    bench.supervisor.unload(TEAM, id).await;
    let got = got?.unwrap_or(Value::Null);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value_and_everything_else_exactly() {
        assert!(same(&json!({"a": [22, {"b": 1.0}]}), &json!({"a": [22.0, {"b": 1}]})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same(&json!([1, 2]), &json!([2, 1])));
        assert!(!same(&json!("1"), &json!(1)));
    }
}
