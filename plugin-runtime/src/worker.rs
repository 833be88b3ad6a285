//! The worker process: holds plugin VMs and answers the supervisor's requests, one at a
//! time. It is expendable by design: a Luau defect that crashes it takes down only the
//! VMs it holds, and the supervisor restarts it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::host::Host;
use crate::kv::KeyValue;
use serde_json::Value;

use crate::hook::{Hook, PluginConfigId, PluginError};
use crate::protocol::{
    event_allowance, read_frame, write_frame, Instance, Request, Response, WireEvent, WireOutput, MAX_FRAME_BYTES,
};
use crate::sandbox::Vm;

/// How long past its deadline (and its own limit again) a call that reaches no
/// interrupt may run before the worker aborts.
const HARD_DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Keys the in-memory cache and storage of one worker may hold.
const MEMORY_KEYS: usize = 100_000;

/// Serves requests from stdin until it closes.
pub async fn serve() -> std::io::Result<()> {
    crate::watchdog::enforce_hard_deadlines(HARD_DEADLINE_GRACE);
    let mut input = tokio::io::stdin();
    let mut output = tokio::io::stdout();
    let stores = Stores::from_env().await;
    let mut warmed = false;
    let mut vms: HashMap<PluginConfigId, Arc<Vm>> = HashMap::new();
    while let Some(request) = read_frame::<Request>(&mut input, MAX_FRAME_BYTES).await? {
        match request {
            Request::Load(instance) => {
                let id = instance.id;
                if !warmed {
                    stores.warm_up(instance.limits.store_timeout).await;
                    warmed = true;
                }
                let (error, hooks) = match load(&instance, &stores).await {
                    Ok(vm) => {
                        let hooks = Hook::ALL.into_iter().filter(|h| vm.has(*h)).collect();
                        if let Some(old) = vms.insert(id, Arc::new(vm)) {
                            let _ = old.run_hook(Hook::Teardown, None).await;
                        }
                        (None, hooks)
                    }
                    Err(e) => (Some(e), Vec::new()),
                };
                write_frame(&mut output, &Response::Loaded { id, error, hooks }).await?;
            }
            Request::Unload { id } => {
                if let Some(vm) = vms.remove(&id) {
                    let _ = vm.run_hook(Hook::Teardown, None).await;
                }
                write_frame(&mut output, &Response::Unloaded { id }).await?;
            }
            Request::Process { chain, events } => {
                let mut batch = Batch::read(events);
                for id in chain {
                    write_frame(&mut output, &Response::Running { id }).await?;
                    let started = std::time::Instant::now();
                    run_one(id, vms.get(&id).map(|vm| &**vm), &mut batch).await;
                    batch.out.durations.push((id, started.elapsed().as_secs_f64()));
                    write_frame(&mut output, &Response::Ran { id }).await?;
                }
                write_frame(&mut output, &Response::Processed(batch.out)).await?;
            }
            Request::OnEvent { chain, events } => {
                // The supervisor sends only events it read itself; one that does not read
                // here is a defect, and no plugin sees it.
                let events: Vec<Option<Value>> = events.iter().map(|t| serde_json::from_str(t).ok()).collect();
                let mut out = WireOutput::default();
                for id in chain {
                    write_frame(&mut output, &Response::Running { id }).await?;
                    if let Some(vm) = vms.get(&id) {
                        for (i, event) in events.iter().enumerate() {
                            let Some(event) = event else { continue };
                            if let Err(e) = vm.run_hook(Hook::OnEvent, Some(event)).await {
                                out.errors.push((id, i, e));
                            }
                        }
                        out.logs.extend(vm.take_logs().into_iter().map(|l| (id, l)));
                        out.captured.extend(vm.take_captured().into_iter().map(|e| (id, e)));
                    }
                    write_frame(&mut output, &Response::Ran { id }).await?;
                }
                write_frame(&mut output, &Response::Processed(out)).await?;
            }
            Request::ExportEvents { id, events } => {
                // The supervisor sends only events it read itself; one that does not
                // read here is a defect, refused whole rather than half exported.
                let parsed: Result<Vec<Value>, _> = events.iter().map(|t| serde_json::from_str::<Value>(t)).collect();
                let (error, logs, captured) = match (vms.get(&id), parsed) {
                    (Some(vm), Ok(events)) => {
                        let error = vm.run_hook(Hook::ExportEvents, Some(&Value::Array(events))).await.err();
                        (error, vm.take_logs(), vm.take_captured())
                    }
                    (Some(_), Err(e)) => {
                        let message = format!("unreadable event: {e}");
                        (Some(PluginError::Failed { hook: "export_events".into(), message }), Vec::new(), Vec::new())
                    }
                    (None, _) => (Some(not_loaded(id, "export_events")), Vec::new(), Vec::new()),
                };
                write_frame(&mut output, &Response::HookDone { id, error, logs, captured }).await?;
            }
            Request::Job { id, name, payload } => {
                let (error, logs, captured) = match (vms.get(&id), serde_json::from_str::<Value>(&payload)) {
                    (Some(vm), Ok(payload)) => {
                        (vm.run_job(&name, &payload).await.err(), vm.take_logs(), vm.take_captured())
                    }
                    (Some(_), Err(e)) => {
                        let message = format!("unreadable payload: {e}");
                        (Some(PluginError::Failed { hook: format!("jobs.{name}"), message }), Vec::new(), Vec::new())
                    }
                    (None, _) => (Some(not_loaded(id, "jobs")), Vec::new(), Vec::new()),
                };
                write_frame(&mut output, &Response::HookDone { id, error, logs, captured }).await?;
            }
            Request::RunTests { id, source } => {
                let (results, logs) = match vms.get(&id) {
                    Some(vm) => (vm.run_tests(&source).await, vm.take_logs()),
                    None => (Err(not_loaded(id, "test.lua")), Vec::new()),
                };
                write_frame(&mut output, &Response::TestsRan { id, results, logs }).await?;
            }
            Request::Hook { id, hook, event } => {
                let event = event.and_then(|text| serde_json::from_str::<Value>(&text).ok());
                let (error, logs, captured) = match vms.get(&id) {
                    Some(vm) => (vm.run_hook(hook, event.as_ref()).await.err(), vm.take_logs(), vm.take_captured()),
                    None => (Some(not_loaded(id, hook.name())), Vec::new(), Vec::new()),
                };
                write_frame(&mut output, &Response::HookDone { id, error, logs, captured }).await?;
            }
        }
    }
    Ok(())
}

/// What a worker process connects to, passed in its environment by whoever starts it
/// (ingest's supervisor): the one place the variable names are spelled. A worker gets
/// this and nothing else of its parent's environment.
#[derive(Debug, Clone, Default)]
pub struct WorkerEnv {
    /// Redis for `ctx.cache`; `None`: in memory.
    pub cache_redis_url: Option<String>,
    /// Prefix of every cache key.
    pub cache_prefix: String,
    pub cache_redis_tls: sluice_connect::redis::RedisTls,
    /// Postgres for `ctx.storage`; `None`: in memory.
    pub storage_database_url: Option<String>,
    /// A MaxMind City database for `ctx.geoip`; `None`: off.
    pub geoip_database: Option<String>,
    /// `ctx.http.fetch` records requests instead of sending them (`sluice-plugin test`).
    pub http_stub: bool,
}

const CACHE_REDIS_URL: &str = "SLUICE_PLUGIN_CACHE_REDIS_URL";
const CACHE_PREFIX: &str = "SLUICE_PLUGIN_CACHE_PREFIX";
/// Prefix of the cache's Redis TLS settings (`…REDIS_TLS_CA_FILE` and the others).
const CACHE_TLS_PREFIX: &str = "SLUICE_PLUGIN_CACHE_";
const STORAGE_DATABASE_URL: &str = "SLUICE_PLUGIN_STORAGE_DATABASE_URL";
const HTTP_STUB: &str = "SLUICE_PLUGIN_HTTP_STUB";
/// Also read by `sluice-plugin`'s `--geoip`.
pub(crate) const GEOIP_DATABASE: &str = "SLUICE_PLUGIN_GEOIP_DATABASE";

impl WorkerEnv {
    pub fn to_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![(CACHE_PREFIX.to_string(), self.cache_prefix.clone())];
        for (name, value) in [
            (CACHE_REDIS_URL, &self.cache_redis_url),
            (STORAGE_DATABASE_URL, &self.storage_database_url),
            (GEOIP_DATABASE, &self.geoip_database),
        ] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                vars.push((name.to_string(), value.clone()));
            }
        }
        vars.extend(self.cache_redis_tls.to_vars(CACHE_TLS_PREFIX));
        if self.http_stub {
            vars.push((HTTP_STUB.to_string(), "1".to_string()));
        }
        vars
    }

    pub fn from_env() -> WorkerEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        WorkerEnv {
            cache_redis_url: var(CACHE_REDIS_URL),
            cache_prefix: var(CACHE_PREFIX).unwrap_or_default(),
            cache_redis_tls: sluice_connect::redis::RedisTls::from_vars(CACHE_TLS_PREFIX),
            storage_database_url: var(STORAGE_DATABASE_URL),
            geoip_database: var(GEOIP_DATABASE),
            http_stub: var(HTTP_STUB).is_some_and(|v| v == "1"),
        }
    }
}

/// Where `ctx.cache`, `ctx.storage` and `ctx.geoip` live, as [`WorkerEnv`] says; in
/// memory (geoip off) when it names nothing.
struct Stores {
    cache: KeyValue,
    storage: KeyValue,
    /// `ctx.jobs`: the storage database's `plugin_jobs`, or memory.
    jobs: crate::jobs::JobQueue,
    geoip: Option<crate::host::GeoIp>,
    http_stub: bool,
}

impl Stores {
    async fn from_env() -> Stores {
        let env = WorkerEnv::from_env();
        let memory = KeyValue::memory(MEMORY_KEYS);
        let cache = match &env.cache_redis_url {
            None => memory.namespaced("cache/"),
            Some(url) => match sluice_connect::redis::client(url, &env.cache_redis_tls) {
                Err(e) => KeyValue::unavailable(&format!("cache unavailable: {e}")),
                Ok(client) => {
                    let connect = redis::aio::ConnectionManager::new(client);
                    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
                        Ok(Ok(c)) => KeyValue::redis(c, &env.cache_prefix),
                        Ok(Err(e)) => KeyValue::unavailable(&format!("cache unavailable: {e}")),
                        Err(_) => KeyValue::unavailable("cache unavailable: redis did not answer"),
                    }
                }
            },
        };
        let (storage, jobs) = match &env.storage_database_url {
            None => (memory.namespaced("storage/"), crate::jobs::JobQueue::memory()),
            Some(url) => match sluice_connect::postgres::options(url) {
                Ok(options) => {
                    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy_with(options);
                    (KeyValue::postgres(pool.clone()), crate::jobs::JobQueue::Postgres(pool))
                }
                Err(e) => (
                    KeyValue::unavailable(&format!("storage unavailable: {e}")),
                    crate::jobs::JobQueue::Unavailable(e.to_string()),
                ),
            },
        };
        let geoip = env.geoip_database.and_then(|path| {
            crate::host::open_geoip(std::path::Path::new(&path))
                .inspect_err(|e| tracing::warn!(error = %e, "geoip database not readable; ctx.geoip is off"))
                .ok()
        });
        Stores { cache, storage, jobs, geoip, http_stub: env.http_stub }
    }
}

impl Stores {
    /// Connects cache and storage before the first plugin call needs them; a store that
    /// does not answer within `within` is left to connect on first use, with a warning.
    async fn warm_up(&self, within: std::time::Duration) {
        for (name, store) in [("cache", &self.cache), ("storage", &self.storage)] {
            match tokio::time::timeout(within, store.warm_up()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(store = name, error = %e, "plugin {name} not reachable at load"),
                Err(_) => tracing::warn!(store = name, "plugin {name} did not answer at load"),
            }
        }
    }
}

async fn load(instance: &Instance, stores: &Stores) -> Result<Vm, PluginError> {
    let quota = instance.limits.store;
    let (cache, storage) =
        (stores.cache.for_plugin_config(instance.id, quota), stores.storage.for_plugin_config(instance.id, quota));
    let host = if stores.http_stub { Host::with_http_stub(cache, storage) } else { Host::new(cache, storage) };
    let host = host
        .with_geoip(stores.geoip.clone())
        .with_attachments(instance.attachments.clone())
        .with_jobs(stores.jobs.clone())
        .for_plugin_config(instance.id.0);
    Vm::new(&instance.source, &instance.config, instance.limits.clone(), host).await
}

/// A batch in the worker: each event as JSON text, handed from one instance of the
/// chain to the next (each VM reads it into its own tables and writes what it returns).
struct Batch {
    out: WireOutput,
    /// Each event's size as received, for its growth allowance.
    sizes: Vec<usize>,
}

impl Batch {
    fn read(events: Vec<String>) -> Batch {
        let sizes = events.iter().map(String::len).collect();
        let events = events
            .into_iter()
            .map(|text| WireEvent { event: Some(text), succeeded: Vec::new(), failed: Vec::new() })
            .collect();
        Batch { out: WireOutput { events, ..WireOutput::default() }, sizes }
    }
}

/// One instance's pass over the events still alive. Each output is checked where it is
/// produced: one that grew past its allowance is this instance's failure, and the event
/// goes on as it was.
async fn run_one(id: PluginConfigId, vm: Option<&Vm>, batch: &mut Batch) {
    let out = &mut batch.out;
    for (i, processed) in out.events.iter_mut().enumerate() {
        // Dropped by an earlier instance.
        let Some(event) = &processed.event else { continue };
        let result = match vm {
            Some(vm) => vm.process_event_text(event).await.and_then(|next| {
                let Some(text) = next else { return Ok(None) };
                let allowance = event_allowance(batch.sizes[i], vm.limits().event_bytes);
                if text.len() > allowance {
                    return Err(PluginError::InvalidEvent(format!(
                        "the event grew to {} bytes, over its allowance of {allowance}",
                        text.len()
                    )));
                }
                Ok(Some(text))
            }),
            None => Err(not_loaded(id, "process_event")),
        };
        match result {
            Ok(next) => {
                processed.event = next;
                processed.succeeded.push(id);
            }
            Err(e) => {
                processed.failed.push(id);
                out.errors.push((id, i, e));
            }
        }
    }
    if let Some(vm) = vm {
        out.logs.extend(vm.take_logs().into_iter().map(|l| (id, l)));
    }
}

fn not_loaded(id: PluginConfigId, hook: &str) -> PluginError {
    PluginError::Failed { hook: hook.into(), message: format!("plugin config {id} is not loaded") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_round_trips_and_leaves_out_what_is_unset() {
        let env = WorkerEnv {
            cache_redis_url: Some("rediss://cache:6380".into()),
            cache_prefix: "p/plugin-cache/".into(),
            cache_redis_tls: sluice_connect::redis::RedisTls::default(),
            storage_database_url: None,
            geoip_database: Some(String::new()),
            http_stub: false,
        };
        let vars = env.to_vars();
        assert!(vars.contains(&(CACHE_REDIS_URL.to_string(), "rediss://cache:6380".to_string())));
        assert!(!vars.iter().any(|(k, _)| k == STORAGE_DATABASE_URL || k == GEOIP_DATABASE), "{vars:?}");
    }
}
