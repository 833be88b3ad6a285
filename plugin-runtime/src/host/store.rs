//! `ctx.cache` (Redis) and `ctx.storage` (Postgres), namespaced by the host to the plugin
//! configuration, within its quotas, their waits counted as the call's I/O.

use std::time::Duration;

use mlua::{Lua, Table, Value as LuaValue};

use super::{Build, Host, Namespace};
use crate::convert;
use crate::kv::KeyValue;
use crate::limits::Limits;

pub(super) const CACHE: Namespace = Namespace {
    name: "cache",
    declarations: "",
    field: r#"	-- Redis, namespaced to this plugin config. Values are JSON-encodable, at most 64 KiB.
	cache: {
		get: (key: string) -> any,
		set: (key: string, value: any, ttl_seconds: number?) -> (),
		incr: (key: string, by: number?) -> number,
		expire: (key: string, seconds: number) -> boolean,
		lpush: (key: string, value: any) -> number,
		lrange: (key: string, start: number, stop: number) -> { any },
		llen: (key: string) -> number,
	},
"#,
    build: cache,
    frozen: true,
};

pub(super) const STORAGE: Namespace = Namespace {
    name: "storage",
    declarations: "",
    field: r#"	-- Postgres, namespaced to this plugin config.
	storage: {
		get: (key: string) -> any,
		set: (key: string, value: any) -> (),
		del: (key: string) -> (),
	},
"#,
    build: storage,
    frozen: true,
};

fn cache(b: &Build) -> mlua::Result<LuaValue> {
    table(b.lua, b.host, &b.host.inner.cache, b.limits, true).map(LuaValue::Table)
}

fn storage(b: &Build) -> mlua::Result<LuaValue> {
    table(b.lua, b.host, &b.host.inner.storage, b.limits, false).map(LuaValue::Table)
}

/// `cache` (get, set with ttl, incr, expire, lpush, lrange, llen) or `storage` (get,
/// set, del). Values travel as JSON text, capped.
fn table(lua: &Lua, host: &Host, kv: &KeyValue, limits: &Limits, cache: bool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let max = limits.value_bytes;
    let memory = limits.memory_bytes;
    let encode = move |lua: &Lua, v: LuaValue| -> mlua::Result<String> {
        convert::check(lua, &v, max).map_err(|e| match e {
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
