//! `ctx.time.now_ms()`: the host's clock.

use mlua::Value as LuaValue;

use super::{time_now, Build, Namespace};

pub(super) const TIME: Namespace = Namespace {
    name: "time",
    declarations: "",
    field: r#"	time: { now_ms: () -> number },
"#,
    build,
    frozen: true,
};

fn build(b: &Build) -> mlua::Result<LuaValue> {
    let time = b.lua.create_table()?;
    time.raw_set("now_ms", b.lua.create_function(|_, ()| Ok(time_now().as_millis() as f64))?)?;
    Ok(LuaValue::Table(time))
}
