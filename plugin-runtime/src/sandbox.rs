//! One plugin instance in one Luau VM, locked down.
//!
//! Why each step (each measured when it was written): `Lua::new()` with Luau installs a
//! file-system `require`, removed here with the other ways to load or reach code
//! (`loadstring`, `getfenv`/`setfenv`, `debug`). After `sandbox(true)` the globals and
//! libraries are read-only; the plugin's chunk gets a fresh environment table whose
//! locked, read-only metatable reads through to those globals, so what a plugin
//! defines stays in its own table. Only text chunks load, never bytecode. One VM per
//! instance: nothing is shared between plugins or teams but the read-only base.

use std::sync::Arc;

use mlua::{ChunkMode, Function, Lua, LuaSerdeExt, MultiValue, Table, Value as LuaValue};
use serde_json::{Map, Value};

use crate::convert;
use crate::hook::{Hook, PluginError};
use crate::host::{self, Host, LogEntry};
use crate::limits::Limits;
use crate::manifest::PluginSource;
use crate::watchdog::{Exceeded, Guard};

pub struct Vm {
    pub(crate) lua: Lua,
    pub(crate) plugin: Table,
    pub(crate) ctx: Table,
    pub(crate) guard: Arc<Guard>,
    pub(crate) limits: Limits,
    pub(crate) host: Host,
    /// The last call's thread, reset for the next call instead of made anew.
    spare: std::sync::Mutex<Option<mlua::Thread>>,
}

impl Vm {
    /// Compiles the plugin in a new VM and runs its `setup`.
    pub async fn new(
        source: &PluginSource,
        config: &Map<String, Value>,
        limits: Limits,
        host: Host,
    ) -> Result<Vm, PluginError> {
        let compile = |e: mlua::Error| PluginError::Compile(e.to_string());
        let limits = limits.asked_by(&source.manifest.limits);
        let lua = Lua::new();
        let globals = lua.globals();
        for name in ["require", "loadstring", "getfenv", "setfenv", "debug", "print", "gcinfo"] {
            globals.raw_set(name, LuaValue::Nil).map_err(compile)?;
        }
        lua.sandbox(true).map_err(compile)?;
        lua.set_memory_limit(limits.memory_bytes).map_err(compile)?;

        let guard = Guard::new();
        crate::watchdog::install(&lua, &guard).map_err(compile)?;
        // Until the Vm exists (whose drop releases), a failed load releases here.
        let mut unfinished = Unfinished(Some(lua.clone()));

        host.attach(guard.clone());
        let env = lock_down_env(&lua).map_err(compile)?;
        let ctx = host::context(&lua, source, config, &limits, &host).map_err(compile)?;
        let chunk = lua
            .load(&source.main)
            .set_name(format!("={}", source.manifest.name))
            .set_mode(ChunkMode::Text)
            .set_environment(env);
        guard.arm(limits.hook_wall, limits.hook_ticks);
        let started = std::time::Instant::now();
        let loaded = chunk.call_async::<LuaValue>(()).await;
        let hit = guard.hit().map(|h| (h, Spent::since(limits.hook_wall, limits.hook_ticks, started)));
        guard.disarm();
        let plugin = match loaded {
            Ok(LuaValue::Table(t)) => t,
            Ok(other) => {
                return Err(PluginError::Compile(format!("main.lua returned a {}, not a table", other.type_name())))
            }
            Err(e) => return Err(classify(Hook::Setup, e, hit, &limits)),
        };
        unfinished.0 = None;
        let vm = Vm { lua, plugin, ctx, guard, limits, host, spare: Default::default() };
        vm.call(Hook::Setup, ()).await?;
        Ok(vm)
    }

    pub fn has(&self, hook: Hook) -> bool {
        match (hook, self.plugin.raw_get::<LuaValue>(hook.name())) {
            (Hook::Jobs, Ok(LuaValue::Table(_))) => true,
            (_, Ok(LuaValue::Function(_))) => hook != Hook::Jobs,
            _ => false,
        }
    }

    /// Runs the plugin's job `name` with `payload` (the hook limits): `jobs.<name>(payload, ctx)`.
    pub async fn run_job(&self, name: &str, payload: &Value) -> Result<(), PluginError> {
        let failed = |message: String| PluginError::Failed { hook: format!("jobs.{name}"), message };
        let f: Function = match self.plugin.raw_get::<LuaValue>("jobs") {
            Ok(LuaValue::Table(jobs)) => match jobs.raw_get::<LuaValue>(name) {
                Ok(LuaValue::Function(f)) => f,
                _ => return Err(failed(format!("the plugin has no job named {name:?}"))),
            },
            _ => return Err(failed("the plugin has no jobs".into())),
        };
        self.host.set_capture_depth(0);
        let payload = self.lua.to_value(payload).map_err(|e| PluginError::InvalidEvent(e.to_string()))?;
        let args = MultiValue::from_vec(vec![payload, LuaValue::Table(self.ctx.clone())]);
        self.invoke(Hook::Jobs, f, args).await.map(drop)
    }

    /// Runs `process_event`: `Ok(Some(event))`, `Ok(None)` to drop it, or why it failed.
    pub async fn process_event(&self, event: &Value) -> Result<Option<Value>, PluginError> {
        let Some(text) = self.process_event_text(&event.to_string()).await? else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|e| PluginError::InvalidEvent(e.to_string()))
    }

    /// [`Vm::process_event`] on JSON text, read into the VM's tables and written from
    /// them with no `Value` in between (what the worker runs per event and instance).
    pub async fn process_event_text(&self, event: &str) -> Result<Option<String>, PluginError> {
        if !self.has(Hook::ProcessEvent) {
            return Ok(Some(event.to_string()));
        }
        let invalid = |e: mlua::Error| PluginError::InvalidEvent(cap(e.to_string()));
        let input = convert::from_json_text(&self.lua, event, self.limits.memory_bytes).map_err(invalid)?;
        // What the plugin may not change, read before it can change the table in place.
        let fixed = |v: &LuaValue| -> [Option<Value>; 2] {
            let LuaValue::Table(t) = v else { return [None, None] };
            ["uuid", "team_id"].map(|k| t.raw_get::<LuaValue>(k).ok().and_then(|v| self.lua.from_value(v).ok()))
        };
        let before = fixed(&input);
        let out = self.call(Hook::ProcessEvent, input).await?;
        let out = match out.into_iter().next() {
            None | Some(LuaValue::Nil) => return Ok(None),
            Some(v) => v,
        };
        let text = convert::to_json_text(&self.lua, &out, self.limits.event_bytes).map_err(invalid)?;
        if !text.starts_with('{') {
            return Err(PluginError::InvalidEvent(format!("a {}", json_kind(&text))));
        }
        for (key, (was, is)) in ["uuid", "team_id"].iter().zip(before.into_iter().zip(fixed(&out))) {
            if was != is {
                return Err(PluginError::InvalidEvent(format!("changing `{key}` is refused")));
            }
        }
        Ok(Some(text))
    }

    /// Runs a hook other than `process_event` (with the hook limits); a missing hook is a
    /// success. `on_event(event, ctx)` gets the event, `export_events(events, ctx)` an
    /// array of them; schedules get `(ctx, info)` with `info.period_start_ms`, the start
    /// of the period this run is for.
    pub async fn run_hook(&self, hook: Hook, arg: Option<&Value>) -> Result<(), PluginError> {
        if !self.has(hook) {
            return Ok(());
        }
        // What the call is about decides how deep its captures are (see host::capture).
        let depth = match (hook, arg) {
            (Hook::OnEvent, Some(event)) => host::depth_of(event),
            (Hook::ExportEvents, Some(Value::Array(events))) => events.iter().map(host::depth_of).max().unwrap_or(0),
            _ => 0,
        };
        self.host.set_capture_depth(depth);
        let arg = match arg {
            Some(v) => self.lua.to_value(v).map_err(|e| PluginError::InvalidEvent(e.to_string()))?,
            None => LuaValue::Nil,
        };
        match hook {
            Hook::OnEvent | Hook::ExportEvents => self.call(hook, arg).await.map(drop),
            _ => self.call_ctx_first(hook, arg).await.map(drop),
        }
    }

    pub fn take_logs(&self) -> Vec<LogEntry> {
        self.host.take_logs()
    }

    /// Events the last call sent with `ctx.capture`.
    pub fn take_captured(&self) -> Vec<Value> {
        self.host.take_captured()
    }

    /// The limits this instance runs with (the operator's, tightened by its manifest).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Lua heap in use, for the operator's view.
    pub fn memory_used(&self) -> usize {
        self.lua.used_memory()
    }

    async fn call(&self, hook: Hook, input: impl mlua::IntoLuaMulti) -> Result<MultiValue, PluginError> {
        let f: Function = match self.plugin.raw_get(hook.name()) {
            Ok(LuaValue::Function(f)) => f,
            _ => return Ok(MultiValue::new()),
        };
        let mut args = input.into_lua_multi(&self.lua).map_err(|e| classify(hook, e, None, &self.limits))?;
        args.push_back(LuaValue::Table(self.ctx.clone()));
        self.invoke(hook, f, args).await
    }

    /// `hook(ctx, arg)`: setup, schedules, teardown.
    async fn call_ctx_first(&self, hook: Hook, arg: LuaValue) -> Result<MultiValue, PluginError> {
        let f: Function = match self.plugin.raw_get(hook.name()) {
            Ok(LuaValue::Function(f)) => f,
            _ => return Ok(MultiValue::new()),
        };
        let args = MultiValue::from_vec(vec![LuaValue::Table(self.ctx.clone()), arg]);
        self.invoke(hook, f, args).await
    }

    async fn invoke(&self, hook: Hook, f: Function, args: MultiValue) -> Result<MultiValue, PluginError> {
        let (wall, ticks) = match hook {
            Hook::ProcessEvent => (self.limits.process_event_wall, self.limits.process_event_ticks),
            _ => (self.limits.hook_wall, self.limits.hook_ticks),
        };
        // The call runs on a thread of its own making, so the host can tell its waits
        // from those of coroutines the plugin made.
        let spare = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let thread = match spare {
            // Luau resets a thread in any state (finished or failed) to a new one.
            Some(thread) => thread.reset(f).map(|()| thread),
            None => self.lua.create_thread(f),
        }
        .map_err(|e| classify(hook, e, None, &self.limits))?;
        self.host.enter(hook, thread.clone());
        let reuse = thread.clone();
        self.guard.arm(wall, ticks);
        let started = std::time::Instant::now();
        let result = match thread.into_async::<MultiValue>(args) {
            Ok(running) => running.await,
            Err(e) => Err(e),
        };
        let hit = self.guard.hit().map(|h| (h, Spent::since(wall, ticks, started)));
        self.guard.disarm();
        self.host.leave();
        if !matches!(reuse.status(), mlua::ThreadStatus::Resumable | mlua::ThreadStatus::Running) {
            *self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reuse);
        }
        result.map_err(|e| self.masked(classify(hook, e, hit, &self.limits)))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        crate::watchdog::release(&self.lua);
    }
}

/// A VM whose load has not finished: its interrupt is released if the load fails.
struct Unfinished(Option<Lua>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(lua) = &self.0 {
            crate::watchdog::release(lua);
        }
    }
}

impl Vm {
    /// Error texts end up in the same logs as log lines: secrets masked alike.
    fn masked(&self, e: PluginError) -> PluginError {
        match e {
            PluginError::Failed { hook, message } => PluginError::Failed { hook, message: self.host.mask(message) },
            PluginError::Retry(reason) => PluginError::Retry(self.host.mask(reason)),
            PluginError::InvalidEvent(m) => PluginError::InvalidEvent(self.host.mask(m)),
            other => other,
        }
    }
}

/// A limit the guard saw wins over the error text (a plugin may have caught and
/// rethrown it); then a retry request, memory, anything else.
/// The limits a call ran under and how long it ran: what its error reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spent {
    pub wall: std::time::Duration,
    pub ticks: u64,
    pub took: std::time::Duration,
}

impl Spent {
    pub(crate) fn since(wall: std::time::Duration, ticks: u64, started: std::time::Instant) -> Spent {
        Spent { wall, ticks, took: started.elapsed() }
    }
}

pub(crate) fn classify(hook: Hook, e: mlua::Error, hit: Option<(Exceeded, Spent)>, limits: &Limits) -> PluginError {
    let hook = hook.name().to_string();
    match hit {
        Some((Exceeded::Time, spent)) => {
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            return PluginError::Timeout { hook, limit_ms: ms(spent.wall), took_ms: ms(spent.took) };
        }
        Some((Exceeded::Ticks, spent)) => return PluginError::Ticks { hook, budget: spent.ticks },
        None => {}
    }
    if let Some(reason) = host::retry_reason(&e) {
        return PluginError::Retry(reason);
    }
    match e {
        mlua::Error::SyntaxError { message, .. } => PluginError::Compile(cap(message)),
        mlua::Error::MemoryError(_) => PluginError::Memory { hook, limit: limits.memory_bytes },
        other if other.to_string().contains("not enough memory") => {
            PluginError::Memory { hook, limit: limits.memory_bytes }
        }
        other => PluginError::Failed { hook, message: cap(other.to_string()) },
    }
}

/// Error texts (a traceback of a deep recursion runs to megabytes) are cut to this.
const MAX_ERROR_BYTES: usize = 4096;

fn cap(mut s: String) -> String {
    if s.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The plugin's own global scope: writes stay here, reads fall through to the
/// read-only base; its metatable can be neither read nor replaced.
fn lock_down_env(lua: &Lua) -> mlua::Result<Table> {
    let env = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", lua.globals())?;
    meta.raw_set("__metatable", "locked")?;
    meta.set_readonly(true);
    env.set_metatable(Some(meta))?;
    Ok(env)
}

/// What JSON text holds, by its first character (the text is the writer's own).
fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        Some(b'"') => "string",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ => "number",
    }
}
