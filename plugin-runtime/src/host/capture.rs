//! `ctx.capture(event, properties [, distinct_id])`: a plugin sends an event into the
//! pipeline under its team (importers are built on it). The worker hands what was
//! captured back with the call's answer; ingest produces it to the ingestion topic.
//!
//! Bounded three ways: per call and per minute (`PLUGIN_CAPTURE_MAX_PER_*`), and in
//! depth: each captured event carries `$plugin_capture_depth`, one more than the event
//! the call was about, and a capture past the limit is refused, so plugins that answer
//! captured events by capturing cannot loop without bound.

use std::time::{Duration, Instant};

use mlua::Value as LuaValue;
use serde_json::{json, Map, Value};

use super::{lock, Build, Host, Namespace};
use crate::convert;
use crate::hook::Hook;
use crate::limits::CaptureLimits;

pub(super) const CAPTURE: Namespace = Namespace {
    name: "capture",
    declarations: "",
    field: r#"	-- Sends an event into the pipeline under this team (on_event, export_events, schedules,
	-- jobs), marked $lib = "sluice-plugin" with $plugin_config_id; distinct_id defaults to
	-- properties.distinct_id, else "plugin-<config id>"; properties.timestamp, if given, is
	-- the event's time. Limited per call, per minute, and in how many times captured
	-- events may lead to captures in a row.
	capture: (event: string, properties: { [string]: any }?, distinct_id: string?) -> (),
"#,
    build,
    frozen: true,
};

/// The property that says how many captures in a row led to an event.
pub(crate) const DEPTH: &str = "$plugin_capture_depth";

/// Longest event name or distinct id taken.
const MAX_NAME_BYTES: usize = 200;

#[derive(Default)]
pub(super) struct CaptureState {
    events: Vec<Value>,
    in_call: u32,
    window_start: Option<Instant>,
    in_window: u32,
    /// Depth of what the current call is about.
    depth: u32,
}

impl Host {
    /// Events the last call captured, for the caller to send on.
    pub fn take_captured(&self) -> Vec<Value> {
        std::mem::take(&mut lock(&self.inner.captured).events)
    }

    /// The depth of the events the next call is about (0 for schedules).
    pub(crate) fn set_capture_depth(&self, depth: u32) {
        let mut state = lock(&self.inner.captured);
        state.depth = depth;
        state.in_call = 0;
    }
}

/// The depth of an event (0 if no plugin captured it).
pub(crate) fn depth_of(event: &Value) -> u32 {
    event.get("properties").and_then(|p| p.get(DEPTH)).and_then(Value::as_u64).map_or(0, |d| d.min(1_000) as u32)
}

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let (host, limits, event_bytes) = (b.host.clone(), b.limits.capture.clone(), b.limits.event_bytes);
    let f = b.lua.create_function(
        move |lua, (event, properties, distinct_id): (String, Option<LuaValue>, Option<String>)| {
            let allowed = host
                .hook()
                .is_some_and(|h| matches!(h, Hook::OnEvent | Hook::ExportEvents | Hook::Jobs) || h.is_schedule())
                || (host.hook().is_none() && host.testing());
            if !allowed {
                return Err(mlua::Error::runtime(
                    "ctx.capture is only for on_event, export_events, schedules and jobs",
                ));
            }
            let mut props = match properties {
                None | Some(LuaValue::Nil) => Map::new(),
                Some(v) => match convert::to_json(lua, v, event_bytes)? {
                    Value::Object(m) => m,
                    _ => return Err(mlua::Error::runtime("ctx.capture: properties must be a table of names")),
                },
            };
            let id = host.inner.plugin_config;
            let distinct_id = distinct_id
                .or_else(|| props.get("distinct_id").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("plugin-{id}"));
            for (what, text) in [("event name", &event), ("distinct_id", &distinct_id)] {
                if text.trim().is_empty() || text.len() > MAX_NAME_BYTES {
                    return Err(mlua::Error::runtime(format!(
                        "ctx.capture: {what} must be 1 to {MAX_NAME_BYTES} bytes"
                    )));
                }
            }
            let depth = admit(&mut lock(&host.inner.captured), &limits)?;
            props.insert("$lib".into(), json!("sluice-plugin"));
            props.insert("$plugin_config_id".into(), json!(id));
            props.insert(DEPTH.into(), json!(depth));
            // An importer keeps the source's time: `timestamp` among the properties is the
            // event's (RFC 3339 or epoch, read as capture reads one); else now.
            let now = match props.remove("timestamp") {
                Some(Value::String(t)) => t,
                Some(Value::Number(n)) => n.to_string(),
                _ => time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(mlua::Error::external)?,
            };
            let captured = json!({
                "event": event,
                "distinct_id": distinct_id,
                "properties": props,
                "timestamp": now,
                "uuid": uuid::Uuid::now_v7().to_string(),
            });
            lock(&host.inner.captured).events.push(captured);
            Ok(())
        },
    )?;
    Ok(LuaValue::Function(f))
}

/// Counts one capture against the call's and the minute's quota and the depth limit;
/// answers the captured event's depth.
fn admit(state: &mut CaptureState, limits: &CaptureLimits) -> mlua::Result<u32> {
    let depth = state.depth + 1;
    if depth > limits.max_depth {
        return Err(mlua::Error::runtime(format!(
            "ctx.capture refused: this call is about an event plugins captured {} times in a row, the most is {}",
            state.depth, limits.max_depth
        )));
    }
    if state.in_call >= limits.per_call {
        return Err(mlua::Error::runtime(format!("more than {} captures in one call", limits.per_call)));
    }
    let now = Instant::now();
    if state.window_start.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60)) {
        state.window_start = Some(now);
        state.in_window = 0;
    }
    if state.in_window >= limits.per_minute {
        return Err(mlua::Error::runtime(format!("more than {} captures this minute", limits.per_minute)));
    }
    state.in_call += 1;
    state.in_window += 1;
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_bounded_per_call_per_minute_and_in_depth() {
        let limits = CaptureLimits { per_call: 2, per_minute: 3, max_depth: 2 };
        let mut s = CaptureState::default();
        assert_eq!(admit(&mut s, &limits).unwrap(), 1);
        assert_eq!(admit(&mut s, &limits).unwrap(), 1);
        assert!(admit(&mut s, &limits).unwrap_err().to_string().contains("more than 2 captures in one call"));
        s.in_call = 0;
        admit(&mut s, &limits).unwrap();
        s.in_call = 0;
        assert!(admit(&mut s, &limits).unwrap_err().to_string().contains("more than 3 captures this minute"));
        let mut s = CaptureState { depth: 1, ..Default::default() };
        assert_eq!(admit(&mut s, &limits).unwrap(), 2);
        let mut s = CaptureState { depth: 2, ..Default::default() };
        assert!(admit(&mut s, &limits).unwrap_err().to_string().contains("captured 2 times in a row, the most is 2"));
        assert_eq!(depth_of(&json!({"properties": {DEPTH: 2}})), 2);
        assert_eq!(depth_of(&json!({"properties": {}})), 0);
    }
}
