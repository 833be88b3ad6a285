//! What plugin authors run on their machine (`sluice-plugin test` and `run`): a plugin's
//! `test.lua` and `fixtures/*.json` against a VM with in-memory cache and storage and an
//! http that records instead of sending, and one event through `process_event`. Kept
//! apart from the sandbox, which is what production runs.

use std::path::Path;

use mlua::{ChunkMode, Function, LuaSerdeExt, Value as LuaValue};
use serde_json::{Map, Value};

use crate::hook::{Hook, PluginError};
use crate::host::{GeoIp, Host, LogEntry};
use crate::kv::KeyValue;
use crate::limits::Limits;
use crate::manifest::PluginSource;
use crate::sandbox::{classify, Vm};

/// One test's name and whether it passed (with why not).
pub type TestResult = (String, Result<(), String>);

impl Vm {
    /// Runs an author's `test.lua` against this plugin: its `test_*` functions, in name
    /// order, each under the hook limits. In scope: `plugin` (the hooks table), `ctx`,
    /// `process_event(event)`, `http_requests()` (what the stubbed http received).
    pub async fn run_tests(&self, test_source: &str) -> Result<Vec<(String, Result<(), String>)>, PluginError> {
        let compile = |e: mlua::Error| PluginError::Compile(format!("test.lua: {e}"));
        let env = self.lua.create_table().map_err(compile)?;
        let meta = self.lua.create_table().map_err(compile)?;
        meta.raw_set("__index", self.lua.globals()).map_err(compile)?;
        env.set_metatable(Some(meta)).map_err(compile)?;
        env.raw_set("plugin", self.plugin.clone()).map_err(compile)?;
        env.raw_set("ctx", self.ctx.clone()).map_err(compile)?;
        let (plugin, ctx) = (self.plugin.clone(), self.ctx.clone());
        let process = self
            .lua
            .create_async_function(move |_, event: LuaValue| {
                let (plugin, ctx) = (plugin.clone(), ctx.clone());
                async move {
                    match plugin.raw_get::<LuaValue>("process_event")? {
                        LuaValue::Function(f) => f.call_async::<LuaValue>((event, ctx)).await,
                        _ => Ok(event),
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
            let r = f.call_async::<()>(()).await;
            let hit = self.guard.hit();
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

/// Runs a plugin's tests: `test.lua` (with `test_config.json` under the `given`
/// values), then each fixture (`{"event", "expected" | null, "config"}`), in name order.
pub async fn test_plugin(
    dir: &Path,
    given: &Map<String, Value>,
    geoip: &Option<GeoIp>,
) -> Result<Vec<TestResult>, String> {
    let source = PluginSource::from_dir(dir).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    if let Ok(tests) = std::fs::read_to_string(dir.join("test.lua")) {
        let mut config: Map<String, Value> = match std::fs::read_to_string(dir.join("test_config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("test_config.json: {e}"))?,
            Err(_) => Map::new(),
        };
        config.extend(given.clone());
        let vm = test_vm(&source, &config, geoip).await?;
        for (name, result) in vm.run_tests(&tests).await.map_err(|e| e.to_string())? {
            results.push((format!("test.lua {name}"), result));
        }
    }
    let mut fixtures: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("fixtures"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default();
    fixtures.sort();
    for path in fixtures {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        results.push((name, fixture(&source, given, &path, geoip).await));
    }
    Ok(results)
}

/// One event through the plugin's `process_event`: its output (`None`: dropped) and
/// what it logged.
pub async fn run_plugin(
    dir: &Path,
    event: &Value,
    given: &Map<String, Value>,
    geoip: Option<GeoIp>,
) -> Result<(Result<Option<Value>, PluginError>, Vec<LogEntry>), String> {
    let source = PluginSource::from_dir(dir).map_err(|e| e.to_string())?;
    let config = source.manifest.validate_config(given).map_err(|e| e.to_string())?;
    let kv = KeyValue::memory(10_000);
    let host = Host::new(kv.namespaced("cache/"), kv.namespaced("storage/")).with_geoip(geoip);
    let vm = Vm::new(&source, &config, Limits::default(), host).await.map_err(|e| e.to_string())?;
    let result = vm.process_event(event).await;
    Ok((result, vm.take_logs()))
}

/// A fresh VM with in-memory cache and storage and stubbed http.
async fn test_vm(source: &PluginSource, given: &Map<String, Value>, geoip: &Option<GeoIp>) -> Result<Vm, String> {
    let config = source.manifest.validate_config(given).map_err(|e| e.to_string())?;
    let kv = KeyValue::memory(10_000);
    let host = Host::with_http_stub(kv.namespaced("cache/"), kv.namespaced("storage/")).with_geoip(geoip.clone());
    Vm::new(source, &config, Limits::default(), host).await.map_err(|e| e.to_string())
}

async fn fixture(
    source: &PluginSource,
    given: &Map<String, Value>,
    path: &Path,
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
    let got = vm.process_event(input).await.map_err(|e| e.to_string())?.unwrap_or(Value::Null);
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
