//! `ctx.http.fetch(url, options)`: the allow-list and SSRF guard of `crate::http`, a cap on
//! requests per call, not in `process_event` unless asked for and allowed; recorded
//! instead of sent under `sluice-plugin test`.

use std::time::Duration;

use mlua::{Table, Value as LuaValue};
use serde_json::{Map, Value};

use super::{lock, Build, Namespace};
use crate::hook::Hook;
use crate::http;

pub(super) const HTTP: Namespace = Namespace {
    name: "http",
    declarations: r#"type HttpResponse = { status: number, headers: { [string]: string }, body: string }
"#,
    field: r#"	-- Only hosts in plugin.json's http.allow; not in process_event unless asked for and allowed.
	http: {
		fetch: (url: string, options: {
			method: string?,
			headers: { [string]: string }?,
			body: string?,
			timeout_ms: number?,
		}?) -> HttpResponse,
	},
"#,
    build,
    frozen: true,
};

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let (lua, source, config, limits, host) = (b.lua, b.source, b.config, b.limits, b.host);
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
    Ok(LuaValue::Table(t))
}
