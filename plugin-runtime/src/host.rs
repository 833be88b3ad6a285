//! The `ctx` a plugin's hooks receive: `config`, `global`, `log`, `cache`, `storage`,
//! `http`, `json`, `crypto`, `time`, `retry`. Everything a plugin can reach outside its
//! VM goes through here, namespaced by the host (never by the plugin) and capped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, Table, Thread, Value as LuaValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::convert;
use crate::hook::Hook;
use crate::http;
use crate::kv::KeyValue;
use crate::limits::Limits;
use crate::manifest::PluginSource;
use crate::watchdog::Guard;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// What the host gives one plugin instance.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    cache: KeyValue,
    storage: KeyValue,
    logs: Mutex<LogState>,
    hook: Mutex<Option<Hook>>,
    /// The Lua thread the current hook call runs on: only its own waits stop the clock.
    hook_thread: Mutex<Option<Thread>>,
    /// `http.fetch` calls in the current hook call.
    http_calls: std::sync::atomic::AtomicU32,
    /// `sluice-plugin test`: requests are recorded and answered 200, never sent.
    http_stub: Option<Mutex<Vec<Value>>>,
    geoip: Option<GeoIp>,
    /// The clock of the VM this host serves, stopped while it awaits I/O.
    guard: Mutex<Option<Arc<Guard>>>,
    /// Awaited I/O in the current hook call.
    io_spent: Mutex<Duration>,
    /// Values of the config fields marked `secret`, masked in whatever the plugin logs.
    secrets: Mutex<Vec<String>>,
}

/// A MaxMind City database, read once per process and shared by its VMs.
pub type GeoIp = Arc<maxminddb::Reader<Vec<u8>>>;

/// Opens a MaxMind City (or GeoLite2-City) database file.
pub fn open_geoip(path: &std::path::Path) -> Result<GeoIp, String> {
    maxminddb::Reader::open_readfile(path).map(Arc::new).map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Default)]
struct LogState {
    entries: Vec<LogEntry>,
    window_start: Option<Instant>,
    in_window: u32,
    dropped: u64,
}

impl Host {
    /// `cache` and `storage` are already namespaced for this plugin configuration.
    pub fn new(cache: KeyValue, storage: KeyValue) -> Host {
        Host {
            inner: Arc::new(HostInner {
                cache,
                storage,
                logs: Mutex::default(),
                hook: Mutex::default(),
                hook_thread: Mutex::default(),
                http_calls: Default::default(),
                http_stub: None,
                geoip: None,
                guard: Mutex::default(),
                io_spent: Mutex::default(),
                secrets: Mutex::default(),
            }),
        }
    }

    /// A host whose `http.fetch` records requests instead of sending them.
    pub fn with_http_stub(cache: KeyValue, storage: KeyValue) -> Host {
        let mut host = Host::new(cache, storage);
        Arc::get_mut(&mut host.inner).expect("new host").http_stub = Some(Mutex::default());
        host
    }

    /// The same host with `ctx.geoip` answering from `db`.
    pub fn with_geoip(mut self, db: Option<GeoIp>) -> Host {
        Arc::get_mut(&mut self.inner).expect("host not shared yet").geoip = db;
        self
    }

    /// `text` with every secret config value in it replaced by `***`.
    pub fn mask(&self, text: String) -> String {
        let secrets = lock(&self.inner.secrets);
        if !secrets.iter().any(|s| text.contains(s.as_str())) {
            return text;
        }
        secrets.iter().fold(text, |t, s| t.replace(s.as_str(), "***"))
    }

    /// Requests recorded by the stub: `{method, url, headers, body}`.
    pub fn stubbed_requests(&self) -> Vec<Value> {
        self.inner.http_stub.as_ref().map(|s| lock(s).clone()).unwrap_or_default()
    }

    pub fn take_logs(&self) -> Vec<LogEntry> {
        std::mem::take(&mut lock(&self.inner.logs).entries)
    }

    /// Log lines dropped by the rate limit so far.
    pub fn dropped_logs(&self) -> u64 {
        lock(&self.inner.logs).dropped
    }

    pub(crate) fn enter(&self, hook: Hook, thread: Thread) {
        *lock(&self.inner.hook) = Some(hook);
        *lock(&self.inner.hook_thread) = Some(thread);
        self.inner.http_calls.store(0, std::sync::atomic::Ordering::Relaxed);
        *lock(&self.inner.io_spent) = Duration::ZERO;
    }

    pub(crate) fn attach(&self, guard: Arc<Guard>) {
        *lock(&self.inner.guard) = Some(guard);
    }

    /// Whether `lua` is running the current hook call's own thread (not a coroutine the
    /// plugin made).
    fn on_hook_thread(&self, lua: &Lua) -> bool {
        lock(&self.inner.hook_thread).as_ref() == Some(&lua.current_thread())
    }

    /// Awaits a host operation for the plugin. In `setup`, `on_event`, schedules and
    /// `teardown` the time is off the hook's wall clock (its limit excludes awaited
    /// I/O) and counts against the call's I/O allowance instead, when the call's own
    /// thread waits: called from a coroutine, the wait gives control back to the plugin,
    /// which must not run off the clock. In `process_event` the clock runs on: its limit
    /// is the pipeline's latency.
    async fn io<T>(
        &self,
        on_hook_thread: bool,
        allowance: Duration,
        timeout: Duration,
        f: impl std::future::Future<Output = mlua::Result<T>>,
    ) -> mlua::Result<T> {
        let guard = lock(&self.inner.guard).clone();
        if self.hook() == Some(Hook::ProcessEvent) {
            // No Lua runs during the wait to notice the deadline: bound the wait by it.
            let left = guard.as_ref().and_then(|g| g.left());
            let cut = left.is_some_and(|left| left < timeout);
            let timeout = left.map_or(timeout, |left| left.min(timeout));
            return tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
                if let Some(g) = guard.filter(|_| cut) {
                    g.expire();
                }
                Err(no_answer(timeout))
            });
        }
        let left = allowance.saturating_sub(*lock(&self.inner.io_spent));
        if left.is_zero() {
            let message = format!("this call has awaited I/O for its whole allowance of {allowance:?}");
            return Err(mlua::Error::runtime(message));
        }
        let paused = guard.as_ref().filter(|_| on_hook_thread).and_then(|g| g.pause());
        let started = Instant::now();
        let timeout = timeout.min(left);
        let out = tokio::time::timeout(timeout, f).await;
        *lock(&self.inner.io_spent) += started.elapsed();
        if let (Some(g), Some(pause)) = (guard, paused) {
            g.resume(pause);
        }
        out.unwrap_or_else(|_| Err(no_answer(timeout)))
    }

    pub(crate) fn leave(&self) {
        *lock(&self.inner.hook) = None;
        *lock(&self.inner.hook_thread) = None;
    }

    fn hook(&self) -> Option<Hook> {
        *lock(&self.inner.hook)
    }

    fn log(&self, level: &str, message: String, limits: &Limits) {
        let mut state = lock(&self.inner.logs);
        let now = Instant::now();
        if state.window_start.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60)) {
            state.window_start = Some(now);
            state.in_window = 0;
        }
        if state.in_window >= limits.log_lines_per_minute {
            state.dropped += 1;
            return;
        }
        state.in_window += 1;
        let message = truncate(self.mask(message), limits.log_line_bytes);
        let at_ms = (time_now().as_millis()) as i64;
        state.entries.push(LogEntry { level: level.to_string(), message, at_ms });
    }
}

/// A host lock, even after a panic elsewhere while it was held: what these locks guard
/// is replaced whole, never left half-changed, and one plugin's call must not leave the
/// worker's other plugins unable to log or time their calls.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn no_answer(timeout: Duration) -> mlua::Error {
    mlua::Error::runtime(format!("no answer within {timeout:?}"))
}

fn time_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Longest `ctx.retry` reason kept.
const MAX_REASON_BYTES: usize = 1024;

/// Raised by `ctx.retry(reason)`: `on_event` or a schedule asks to be run again.
#[derive(Debug, thiserror::Error)]
#[error("retry requested: {0}")]
pub(crate) struct RetryRequested(pub String);

pub(crate) fn retry_reason(e: &mlua::Error) -> Option<String> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<RetryRequested>() {
            return Some(r.0.clone());
        }
        current = err.parent();
    }
    None
}

/// Builds `ctx`, read-only but for `ctx.global`.
pub(crate) fn context(
    lua: &Lua,
    source: &PluginSource,
    config: &Map<String, Value>,
    limits: &Limits,
    host: &Host,
) -> mlua::Result<Table> {
    let ctx = lua.create_table()?;
    let config_map = config;
    // Short values would mask ordinary words; a secret that short is no secret anyway.
    *lock(&host.inner.secrets) = source
        .manifest
        .config
        .iter()
        .filter(|f| f.secret)
        .filter_map(|f| config.get(&f.key).and_then(Value::as_str))
        .filter(|v| v.len() >= 4)
        .map(str::to_string)
        .collect();
    let config = lua.to_value(&Value::Object(config.clone()))?;
    freeze(&config);
    ctx.raw_set("config", config)?;
    ctx.raw_set("global", lua.create_table()?)?;

    let log = lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        let (h, l) = (host.clone(), limits.clone());
        let f = lua.create_function(move |lua, args: mlua::Variadic<LuaValue>| {
            let parts: Vec<String> = args.iter().map(|v| display(lua, v, l.log_line_bytes)).collect();
            h.log(level, parts.join(" "), &l);
            Ok(())
        })?;
        log.raw_set(level, f)?;
    }
    ctx.raw_set("log", log)?;

    // A JSON tree takes up to 16 times its text outside the Lua heap: encode what could
    // be decoded back within the plugin's own memory.
    ctx.raw_set("json", json_table(lua, (limits.memory_bytes / 8).max(64 << 10))?)?;
    ctx.raw_set("crypto", crypto_table(lua)?)?;
    let time = lua.create_table()?;
    time.raw_set("now_ms", lua.create_function(|_, ()| Ok(time_now().as_millis() as f64))?)?;
    ctx.raw_set("time", time)?;
    ctx.raw_set("cache", kv_table(lua, host, &host.inner.cache, limits, true)?)?;
    ctx.raw_set("storage", kv_table(lua, host, &host.inner.storage, limits, false)?)?;
    ctx.raw_set("http", http_table(lua, source, config_map, limits, host)?)?;
    ctx.raw_set("geoip", geoip_table(lua, host)?)?;
    ctx.raw_set(
        "retry",
        lua.create_function(|_, reason: Option<mlua::String>| -> mlua::Result<()> {
            // The reason ends up in logs and statuses: capped like every plugin text.
            let reason = reason.map(|r| {
                let bytes = r.as_bytes();
                truncate(
                    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON_BYTES + 4)]).into_owned(),
                    MAX_REASON_BYTES,
                )
            });
            Err(mlua::Error::external(RetryRequested(reason.unwrap_or_default())))
        })?,
    )?;
    for (_, v) in ctx.clone().pairs::<String, LuaValue>().flatten() {
        if let LuaValue::Table(t) = v {
            if t != ctx.raw_get::<Table>("global")? {
                t.set_readonly(true);
            }
        }
    }
    ctx.set_readonly(true);
    Ok(ctx)
}

/// Read-only all the way down.
fn freeze(v: &LuaValue) {
    if let LuaValue::Table(t) = v {
        for (_, child) in t.clone().pairs::<LuaValue, LuaValue>().flatten() {
            freeze(&child);
        }
        t.set_readonly(true);
    }
}

/// A log argument as text; a table is written as JSON if it fits the line (the line is
/// cut at `max` anyway), else named.
fn display(lua: &Lua, v: &LuaValue, max: usize) -> String {
    match v {
        LuaValue::String(s) => {
            let bytes = s.as_bytes();
            String::from_utf8_lossy(&bytes[..bytes.len().min(max.saturating_add(4))]).into_owned()
        }
        LuaValue::Table(_) => match convert::to_json(lua, v.clone(), max.saturating_mul(2)) {
            Ok(j) => j.to_string(),
            Err(_) => "<table>".into(),
        },
        other => other.to_string().unwrap_or_else(|_| other.type_name().into()),
    }
}

/// `encode` and `decode`, each bounded by the plugin's memory limit: what they build
/// outside the Lua heap can be no larger than what the plugin could hold inside it.
fn json_table(lua: &Lua, max_bytes: usize) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "encode",
        lua.create_function(move |lua, v: LuaValue| Ok(convert::to_json(lua, v, max_bytes)?.to_string()))?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(move |lua, s: mlua::String| convert::from_json_text(lua, &s.to_str()?, max_bytes))?,
    )?;
    t.raw_set("null", LuaValue::NULL)?;
    Ok(t)
}

fn crypto_table(lua: &Lua) -> mlua::Result<Table> {
    use hmac::Mac;
    use sha2::Digest;
    let t = lua.create_table()?;
    t.raw_set(
        "sha256",
        lua.create_function(|_, s: mlua::String| Ok(hex::encode(sha2::Sha256::digest(s.as_bytes()))))?,
    )?;
    t.raw_set(
        "hmac_sha256",
        lua.create_function(|_, (key, msg): (mlua::String, mlua::String)| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key.as_bytes()).map_err(mlua::Error::external)?;
            mac.update(&msg.as_bytes());
            Ok(hex::encode(mac.finalize().into_bytes()))
        })?,
    )?;
    t.raw_set("md5", lua.create_function(|_, s: mlua::String| Ok(hex::encode(md5::Md5::digest(s.as_bytes()))))?)?;
    t.raw_set("uuid_v4", lua.create_function(|_, ()| Ok(uuid::Uuid::new_v4().to_string()))?)?;
    Ok(t)
}

/// `cache` (get, set with ttl, incr, expire, lpush, lrange, llen) or `storage` (get,
/// set, del). Values travel as JSON text, capped.
fn kv_table(lua: &Lua, host: &Host, kv: &KeyValue, limits: &Limits, cache: bool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let max = limits.value_bytes;
    let memory = limits.memory_bytes;
    let encode = move |lua: &Lua, v: LuaValue| -> mlua::Result<String> {
        convert::check(&v, max).map_err(|e| match e {
            convert::ConvertError::TooLarge(_) => mlua::Error::runtime(format!("value is over the {max} byte limit")),
            deep => deep.into(),
        })?;
        let text = convert::to_json(lua, v, max)?.to_string();
        if text.len() > max {
            return Err(mlua::Error::runtime(format!("value of {} bytes is over the {max} byte limit", text.len())));
        }
        Ok(text)
    };
    // Values other writers stored may be anything: text that is not JSON is a string.
    let decode = move |lua: &Lua, text: Option<String>| -> mlua::Result<LuaValue> {
        match text {
            None => Ok(LuaValue::Nil),
            Some(t) if serde_json::from_str::<serde::de::IgnoredAny>(&t).is_err() => {
                Ok(LuaValue::String(lua.create_string(&t)?))
            }
            Some(t) => convert::from_json_text(lua, &t, memory),
        }
    };
    let store = Store {
        kv: kv.clone(),
        host: host.clone(),
        io_allowance: limits.hook_io,
        timeout: limits.store_timeout,
        on_hook_thread: false,
    };
    t.raw_set(
        "get",
        store.function(lua, move |lua, s, key: String| async move { decode(&lua, s.run(s.kv.get(&key)).await?) })?,
    )?;
    t.raw_set(
        "set",
        store.function(lua, move |lua, s, (key, value, ttl): (String, LuaValue, Option<u64>)| {
            let text = encode(&lua, value);
            let ttl = ttl.filter(|_| cache).map(Duration::from_secs);
            async move { s.run(s.kv.set(&key, &text?, ttl)).await }
        })?,
    )?;
    if !cache {
        t.raw_set("del", store.function(lua, |_, s, key: String| async move { s.run(s.kv.del(&key)).await })?)?;
        return Ok(t);
    }
    t.raw_set(
        "incr",
        store.function(lua, |_, s, (key, by): (String, Option<i64>)| async move {
            s.run(s.kv.incr(&key, by.unwrap_or(1))).await
        })?,
    )?;
    t.raw_set(
        "expire",
        store.function(lua, |_, s, (key, seconds): (String, u64)| async move {
            s.run(s.kv.expire(&key, Duration::from_secs(seconds))).await
        })?,
    )?;
    t.raw_set(
        "lpush",
        store.function(lua, move |lua, s, (key, value): (String, LuaValue)| {
            let text = encode(&lua, value);
            async move { s.run(s.kv.lpush(&key, &text?)).await }
        })?,
    )?;
    t.raw_set(
        "lrange",
        store.function(lua, move |lua, s, (key, start, stop): (String, i64, i64)| async move {
            let out = lua.create_table()?;
            for item in s.run(s.kv.lrange(&key, start, stop)).await? {
                out.raw_push(decode(&lua, Some(item))?)?;
            }
            Ok(out)
        })?,
    )?;
    t.raw_set("llen", store.function(lua, |_, s, key: String| async move { s.run(s.kv.llen(&key)).await })?)?;
    Ok(t)
}

/// What a `cache` or `storage` function works with.
#[derive(Clone)]
struct Store {
    kv: KeyValue,
    host: Host,
    io_allowance: Duration,
    timeout: Duration,
    /// Set per call: see [`Host::io`].
    on_hook_thread: bool,
}

impl Store {
    /// A Lua function whose calls get their own handle on the store.
    fn function<A, R, F, Fut>(&self, lua: &Lua, f: F) -> mlua::Result<mlua::Function>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
        F: Fn(Lua, Store, A) -> Fut + mlua::MaybeSend + 'static,
        Fut: std::future::Future<Output = mlua::Result<R>> + mlua::MaybeSend + 'static,
    {
        let store = self.clone();
        lua.create_async_function(move |lua, args: A| {
            let on_hook_thread = store.host.on_hook_thread(&lua);
            f(lua, Store { on_hook_thread, ..store.clone() }, args)
        })
    }

    /// One store operation, as the host's I/O.
    async fn run<T>(&self, op: impl std::future::Future<Output = Result<T, crate::kv::KvError>>) -> mlua::Result<T> {
        let op = async { op.await.map_err(mlua::Error::external) };
        self.host.io(self.on_hook_thread, self.io_allowance, self.timeout, op).await
    }
}

/// `ctx.geoip.lookup(ip)`: `{city_name, country_code, country_name, continent_code,
/// continent_name, subdivision_1_code, subdivision_1_name, postal_code, latitude,
/// longitude, time_zone, accuracy_radius}` (what is known), or nil.
fn geoip_table(lua: &Lua, host: &Host) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let db = host.inner.geoip.clone();
    t.raw_set(
        "lookup",
        lua.create_function(move |lua, ip: String| {
            let Some(db) = &db else { return Err(mlua::Error::runtime("no geoip database is configured")) };
            let Ok(addr) = ip.trim().parse::<std::net::IpAddr>() else { return Ok(LuaValue::Nil) };
            let record: Option<Value> = db.lookup(addr).and_then(|r| r.decode()).map_err(mlua::Error::external)?;
            match record {
                Some(r) => lua.to_value(&geoip_fields(&r)),
                None => Ok(LuaValue::Nil),
            }
        })?,
    )?;
    Ok(t)
}

fn geoip_fields(r: &Value) -> Value {
    let name = |v: &Value| v.get("names").and_then(|n| n.get("en")).cloned();
    let sub = r.get("subdivisions").and_then(|s| s.get(0));
    let location = r.get("location");
    let mut out = Map::new();
    for (key, value) in [
        ("city_name", r.get("city").and_then(name)),
        ("country_code", r.get("country").and_then(|c| c.get("iso_code")).cloned()),
        ("country_name", r.get("country").and_then(name)),
        ("continent_code", r.get("continent").and_then(|c| c.get("code")).cloned()),
        ("continent_name", r.get("continent").and_then(name)),
        ("subdivision_1_code", sub.and_then(|s| s.get("iso_code")).cloned()),
        ("subdivision_1_name", sub.and_then(name)),
        ("postal_code", r.get("postal").and_then(|p| p.get("code")).cloned()),
        ("latitude", location.and_then(|l| l.get("latitude")).cloned()),
        ("longitude", location.and_then(|l| l.get("longitude")).cloned()),
        ("time_zone", location.and_then(|l| l.get("time_zone")).cloned()),
        ("accuracy_radius", location.and_then(|l| l.get("accuracy_radius")).cloned()),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), v);
        }
    }
    Value::Object(out)
}

fn http_table(
    lua: &Lua,
    source: &PluginSource,
    config: &Map<String, Value>,
    limits: &Limits,
    host: &Host,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let policy = http::Policy::new(&source.manifest.http, &limits.http, config);
    let allowed_in_process_event = source.manifest.http.in_process_event && limits.http.allow_in_process_event;
    let (h, max_calls) = (host.clone(), limits.http.max_requests_per_call);
    // The policy has its own timeout; this one only bounds the I/O accounting.
    let (io, timeout) = (limits.hook_io, limits.http.timeout + Duration::from_secs(1));
    t.raw_set(
        "fetch",
        lua.create_async_function(move |lua, (url, options): (String, Option<Table>)| {
            let (policy, h) = (policy.clone(), h.clone());
            let on_hook_thread = h.on_hook_thread(&lua);
            async move {
                let hook = h.hook();
                if hook == Some(Hook::ProcessEvent) && !allowed_in_process_event {
                    return Err(mlua::Error::runtime("http.fetch is not allowed in process_event"));
                }
                if h.inner.http_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= max_calls {
                    return Err(mlua::Error::runtime(format!("more than {max_calls} http requests in one call")));
                }
                let request = http::Request::from_lua(&lua, &url, options)?;
                if let Some(stub) = &h.inner.http_stub {
                    let body = request.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default().to_string();
                    let headers: Map<String, Value> =
                        request.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
                    lock(stub).push(serde_json::json!({
                        "method": request.method.as_str(), "url": request.url, "headers": headers, "body": body,
                    }));
                    let answer = http::Response { status: 200, headers: Default::default(), body: Vec::new() };
                    return answer.into_lua(&lua);
                }
                let fetch = async { policy.fetch(request).await.map_err(|e| mlua::Error::runtime(e.to_string())) };
                let response = h.io(on_hook_thread, io, timeout, fetch).await?;
                response.into_lua(&lua)
            }
        })?,
    )?;
    Ok(t)
}
