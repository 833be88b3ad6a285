//! `ctx.retry(reason)`: an export hook or a schedule asks to be called again later.

use mlua::Value as LuaValue;

use super::{truncate, Build, Namespace};

pub(super) const RETRY: Namespace = Namespace {
    name: "retry",
    declarations: "",
    field: r#"	-- From on_event, export_events or a schedule: run this call again later (with
	-- back-off, bounded; then the events go to the exports dead letters).
	retry: (reason: string?) -> never,
"#,
    build,
    frozen: true,
};

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

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let f = b.lua.create_function(|_, reason: Option<mlua::String>| -> mlua::Result<()> {
        // The reason ends up in logs and statuses: capped like every plugin text.
        let reason = reason.map(|r| {
            let bytes = r.as_bytes();
            truncate(
                String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON_BYTES + 4)]).into_owned(),
                MAX_REASON_BYTES,
            )
        });
        Err(mlua::Error::external(RetryRequested(reason.unwrap_or_default())))
    })?;
    Ok(LuaValue::Function(f))
}
