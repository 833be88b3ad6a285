//! `ctx.jobs.<name>(payload):run_now()`, `:run_in(seconds)`, `:run_at(unix_ms)`: a job
//! the plugin's `jobs.<name>(payload, ctx)` runs later, durably (Postgres), once across
//! ingest processes and at least once across crashes, retried with back-off on error.
//! Not from `process_event`; bounded by `PLUGIN_JOBS_MAX_PENDING` and
//! `PLUGIN_JOB_PAYLOAD_MAX_BYTES`, and its wait for Postgres is the call's I/O.

use mlua::{Table, Value as LuaValue};

use super::{Build, Host, Namespace};
use crate::convert;
use crate::hook::Hook;
use crate::jobs::QueuedJob;

pub(super) const JOBS: Namespace = Namespace {
    name: "jobs",
    declarations: r#"-- A job about to be started: say when.
type JobStart = {
	run_now: (self: JobStart) -> (),
	run_in: (self: JobStart, seconds: number) -> (),
	run_at: (self: JobStart, unix_ms: number) -> (),
}
"#,
    field: r#"	-- Starts the plugin's jobs.<name>(payload, ctx) later, durably: ctx.jobs.name(payload):run_in(30).
	-- Not in process_event. Retried with back-off on error, then kept as failed.
	jobs: { [string]: (payload: any) -> JobStart },
"#,
    build,
    frozen: true,
};

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let lua = b.lua;
    // `run_now`, `run_in`, `run_at`: made once, shared by every job about to start; each
    // is called as a method of it (`:run_in(30)`), so its first argument is the job.
    let run = |key: Option<&'static str>, scale: f64| -> mlua::Result<mlua::Function> {
        let (host, limits) = (b.host.clone(), b.limits.clone());
        lua.create_async_function(move |lua, (me, value): (Table, Option<f64>)| {
            let (host, limits) = (host.clone(), limits.clone());
            let on_hook_thread = host.on_hook_thread(&lua);
            async move { start(&host, &limits, on_hook_thread, &me, key.zip(value.map(|v| v * scale))).await }
        })
    };
    let (run_now, run_in, run_at) = (run(None, 1.0)?, run(Some("in_ms"), 1000.0)?, run(Some("at_ms"), 1.0)?);
    let payload_bytes = b.limits.jobs.payload_bytes;
    let starter = lua.create_function(move |lua, (_, name): (Table, String)| {
        let (run_now, run_in, run_at) = (run_now.clone(), run_in.clone(), run_at.clone());
        lua.create_function(move |lua, payload: LuaValue| {
            let text = convert::to_json(lua, payload, payload_bytes)
                .map_err(|e| mlua::Error::runtime(format!("job payload: {e}")))?
                .to_string();
            if text.len() > payload_bytes {
                let n = text.len();
                return Err(mlua::Error::runtime(format!(
                    "job payload of {n} bytes is over the {payload_bytes} byte limit"
                )));
            }
            let me = lua.create_table()?;
            me.raw_set("name", name.as_str())?;
            me.raw_set("payload", text)?;
            me.raw_set("run_now", run_now.clone())?;
            me.raw_set("run_in", run_in.clone())?;
            me.raw_set("run_at", run_at.clone())?;
            Ok(me)
        })
    })?;
    let jobs = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", starter)?;
    jobs.set_metatable(Some(meta))?;
    Ok(LuaValue::Table(jobs))
}

/// Starts the job `me` now, `in_ms` from now, or at `at_ms`.
async fn start(
    host: &Host,
    limits: &crate::limits::Limits,
    on_hook_thread: bool,
    me: &Table,
    when: Option<(&str, f64)>,
) -> mlua::Result<()> {
    if host.hook() == Some(Hook::ProcessEvent) {
        return Err(mlua::Error::runtime("ctx.jobs is not allowed in process_event"));
    }
    let name: String = me.raw_get("name")?;
    let payload: String = me.raw_get("payload")?;
    let now_ms = super::time_now().as_millis() as f64;
    let run_at_ms = match when {
        Some(("at_ms", at)) => at,
        Some((_, delay)) => now_ms + delay,
        None => now_ms,
    }
    .max(0.0) as i64;
    let Some(queue) = host.inner.jobs.clone() else {
        return Err(mlua::Error::runtime("jobs are not available here"));
    };
    let job = QueuedJob { plugin_config: host.inner.plugin_config, name, payload, run_at_ms };
    let enqueue = async { queue.enqueue(job, &limits.jobs).await.map_err(mlua::Error::external) };
    host.io(on_hook_thread, limits.hook_io, limits.store_timeout, enqueue).await
}

impl Host {
    /// The same host starting jobs into `queue`.
    pub fn with_jobs(mut self, queue: crate::jobs::JobQueue) -> Host {
        std::sync::Arc::get_mut(&mut self.inner).expect("host not shared yet").jobs = Some(queue);
        self
    }

    /// Jobs started in memory so far (`sluice-plugin test`).
    pub fn started_jobs(&self) -> Vec<QueuedJob> {
        self.inner.jobs.as_ref().map(|q| q.started()).unwrap_or_default()
    }
}
