//! `ctx.log.debug|info|warn|error(...)`: lines capped in length and per minute, secrets
//! masked, kept for the plugin's log.

use mlua::{Lua, Value as LuaValue};

use super::{Build, Namespace};
use crate::convert;

pub(super) const LOG: Namespace = Namespace {
    name: "log",
    declarations: "",
    field: r#"	log: {
		debug: (...any) -> (),
		info: (...any) -> (),
		warn: (...any) -> (),
		error: (...any) -> (),
	},
"#,
    build,
    frozen: true,
};

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let log = b.lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        let (h, l) = (b.host.clone(), b.limits.clone());
        let f = b.lua.create_function(move |lua, args: mlua::Variadic<LuaValue>| {
            let parts: Vec<String> = args.iter().map(|v| display(lua, v, l.log_line_bytes)).collect();
            h.log(level, parts.join(" "), &l);
            Ok(())
        })?;
        log.raw_set(level, f)?;
    }
    Ok(LuaValue::Table(log))
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
