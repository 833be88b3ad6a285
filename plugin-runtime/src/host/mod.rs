//! The `ctx` a plugin's hooks receive. Everything a plugin can reach outside its VM goes
//! through here, namespaced by the host (never by the plugin) and capped.
//!
//! One file per `ctx` namespace, each declaring itself in [`NAMESPACES`]: its name, its
//! Luau type for authors, and how it is built. `ctx` is built from that table and
//! nothing else, and so are the authors' type definitions
//! (`plugin-runtime/types/sluice.d.luau`, written by `sluice-plugin types`): a namespace
//! added here is in both.
//!
//! | `ctx.` | file |
//! |---|---|
//! | `config`, `global` | [`config`] |
//! | `log` | [`log`] |
//! | `cache`, `storage` | [`store`] |
//! | `http` | [`fetch`] (the policy it enforces is `crate::http`) |
//! | `json` | [`json`] |
//! | `crypto` | [`crypto`] |
//! | `time` | [`time`] |
//! | `geoip` | [`geoip`] |
//! | `attachments` | [`attachments`] |
//! | `capture` | [`capture`] |
//! | `jobs` | [`jobs`] (where they are kept: `crate::jobs`) |
//! | `retry` | [`retry`] |

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Thread, Value as LuaValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hook::Hook;
use crate::kv::KeyValue;
use crate::limits::Limits;
use crate::manifest::PluginSource;
use crate::watchdog::Guard;

mod attachments;
mod capture;
mod config;
mod crypto;
mod fetch;
mod geoip;
mod jobs;
mod json;
mod log;
mod retry;
mod store;
mod time;

pub use attachments::{Attachment, ATTACHMENT_MAX_BYTES};
pub(crate) use capture::depth_of;
pub use geoip::{open_geoip, GeoIp};
pub(crate) use retry::retry_reason;

/// What a namespace is built from.
pub(crate) struct Build<'a> {
    pub lua: &'a Lua,
    pub source: &'a PluginSource,
    pub config: &'a Map<String, Value>,
    pub limits: &'a Limits,
    pub host: &'a Host,
}

/// One field of `ctx`.
pub(crate) struct Namespace {
    pub name: &'static str,
    /// Type declarations it needs, before `Ctx` in the definitions file.
    pub declarations: &'static str,
    /// Its field of `type Ctx`, with the comment authors read.
    pub field: &'static str,
    pub build: fn(&Build) -> mlua::Result<LuaValue>,
    /// Read-only once built (all but `global`).
    pub frozen: bool,
}

/// Every field of `ctx`, in the order the definitions file lists them.
pub(crate) const NAMESPACES: &[Namespace] = &[
    config::CONFIG,
    config::GLOBAL,
    log::LOG,
    store::CACHE,
    store::STORAGE,
    fetch::HTTP,
    json::JSON,
    crypto::CRYPTO,
    time::TIME,
    geoip::GEOIP,
    attachments::ATTACHMENTS,
    capture::CAPTURE,
    jobs::JOBS,
    retry::RETRY,
];

/// The top of the definitions file: how to use it, and the event types.
const PRELUDE: &str = r#"--[[
  Types of what Sluice hands a plugin, for editors and `luau-analyze`.

  With luau-lsp: add this file to "luau-lsp.types.definitionFiles" (or pass
  `--definitions=sluice.d.luau`), then annotate hooks:

    function plugin.process_event(event: Event, ctx: Ctx): Event?

  Nothing here runs: the host provides these values.
]]

type Properties = { [string]: any }

-- An event as process_event receives it (and returns it, or nil to drop it).
-- Changing uuid or team_id is refused; everything else may change.
type Event = {
	uuid: string,
	event: string,
	distinct_id: string,
	properties: Properties,
	timestamp: string?,
	team_id: number,
	ip: string,
	now: string,
	sent_at: string?,
	["$set"]: Properties?,
	["$set_once"]: Properties?,
}

-- A written event as on_event and export_events receive it: the stored row, properties
-- as tables.
type WrittenEvent = {
	uuid: string,
	event: string,
	distinct_id: string,
	properties: Properties,
	timestamp: string,
	team_id: number,
	person_id: string,
	person_properties: Properties?,
	elements_chain: string,
}

"#;

/// The end of the definitions file.
const POSTLUDE: &str = r#"
-- Schedules receive ctx and the start of the period the run is for.
type ScheduleInfo = { period_start_ms: number }
"#;

/// The Luau type definitions for authors (`sluice.d.luau`), from [`NAMESPACES`].
pub fn luau_definitions() -> String {
    let mut out = String::from(PRELUDE);
    for ns in NAMESPACES.iter().filter(|ns| !ns.declarations.is_empty()) {
        out.push_str(ns.declarations);
        out.push('\n');
    }
    out.push_str("type Ctx = {\n");
    for ns in NAMESPACES {
        out.push_str(ns.field);
    }
    out.push_str("}\n");
    out.push_str(POSTLUDE);
    out
}

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
    /// Files uploaded with the plugin configuration.
    attachments: Vec<Attachment>,
    /// The plugin configuration served: what captured events are marked with.
    plugin_config: i64,
    captured: Mutex<capture::CaptureState>,
    /// Running an author's `test.lua` (`sluice-plugin test`): its functions call hooks
    /// directly, outside any hook call.
    testing: std::sync::atomic::AtomicBool,
    /// Where `ctx.jobs` starts jobs; `None`: not available.
    jobs: Option<crate::jobs::JobQueue>,
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
                attachments: Vec::new(),
                plugin_config: 0,
                captured: Mutex::default(),
                testing: Default::default(),
                jobs: None,
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

    /// The same host serving plugin configuration `id` (what its captures are marked with).
    pub fn for_plugin_config(mut self, id: i64) -> Host {
        Arc::get_mut(&mut self.inner).expect("host not shared yet").plugin_config = id;
        self
    }

    /// From now on this host serves an author's `test.lua`.
    pub(crate) fn start_testing(&self) {
        self.inner.testing.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn testing(&self) -> bool {
        self.inner.testing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same host with `ctx.attachments` holding `files`.
    pub fn with_attachments(mut self, files: Vec<Attachment>) -> Host {
        Arc::get_mut(&mut self.inner).expect("host not shared yet").attachments = files;
        self
    }

    fn attachments(&self) -> &[Attachment] {
        &self.inner.attachments
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

/// Builds `ctx` from [`NAMESPACES`], read-only but for `ctx.global`.
pub(crate) fn context(
    lua: &Lua,
    source: &PluginSource,
    config: &Map<String, Value>,
    limits: &Limits,
    host: &Host,
) -> mlua::Result<Table> {
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
    let build = Build { lua, source, config, limits, host };
    let ctx = lua.create_table()?;
    for ns in NAMESPACES {
        let value = (ns.build)(&build)?;
        if let (true, LuaValue::Table(t)) = (ns.frozen, &value) {
            t.set_readonly(true);
        }
        ctx.raw_set(ns.name, value)?;
    }
    ctx.set_readonly(true);
    Ok(ctx)
}

/// Read-only all the way down.
pub(crate) fn freeze(v: &LuaValue) {
    if let LuaValue::Table(t) = v {
        for (_, child) in t.clone().pairs::<LuaValue, LuaValue>().flatten() {
            freeze(&child);
        }
        t.set_readonly(true);
    }
}
