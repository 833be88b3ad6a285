//! `ctx.json.encode|decode|null`, bounded by the plugin's memory.

use mlua::{Lua, Table, Value as LuaValue};

use super::{Build, Namespace};
use crate::convert;

pub(super) const JSON: Namespace = Namespace {
    name: "json",
    declarations: "",
    field: r#"	json: { encode: (value: any) -> string, decode: (text: string) -> any, null: any },
"#,
    build,
    frozen: true,
};

// A JSON tree takes up to 16 times its text outside the Lua heap: encode what could be
// decoded back within the plugin's own memory.
fn build(b: &Build) -> mlua::Result<LuaValue> {
    table(b.lua, (b.limits.memory_bytes / 8).max(64 << 10)).map(LuaValue::Table)
}

/// `encode` and `decode`, each bounded by the plugin's memory limit: what they build
/// outside the Lua heap can be no larger than what the plugin could hold inside it.
fn table(lua: &Lua, max_bytes: usize) -> mlua::Result<Table> {
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
