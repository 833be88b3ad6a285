//! `ctx.config` (the instance's validated settings, read-only all the way down) and
//! `ctx.global` (its own state between calls, the one writable table).

use mlua::{LuaSerdeExt, Value as LuaValue};
use serde_json::Value;

use super::{freeze, Build, Namespace};

pub(super) const CONFIG: Namespace = Namespace {
    name: "config",
    declarations: "",
    field: r#"	-- Validated configuration with defaults applied; read-only.
	config: { [string]: any },
"#,
    build: config,
    frozen: true,
};

pub(super) const GLOBAL: Namespace = Namespace {
    name: "global",
    declarations: "",
    field: r#"	-- State of this plugin instance kept between calls (one VM per instance).
	global: { [string]: any },
"#,
    build: global,
    frozen: false,
};

fn config(b: &Build) -> mlua::Result<LuaValue> {
    let config = b.lua.to_value(&Value::Object(b.config.clone()))?;
    freeze(&config);
    Ok(config)
}

fn global(b: &Build) -> mlua::Result<LuaValue> {
    Ok(LuaValue::Table(b.lua.create_table()?))
}
