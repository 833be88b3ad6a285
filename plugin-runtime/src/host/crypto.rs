//! `ctx.crypto`: hashes, HMAC and uuids, computed in the host.

use mlua::{Lua, Table, Value as LuaValue};

use super::{Build, Namespace};

pub(super) const CRYPTO: Namespace = Namespace {
    name: "crypto",
    declarations: "",
    field: r#"	crypto: {
		sha256: (text: string) -> string,
		hmac_sha256: (key: string, message: string) -> string,
		md5: (text: string) -> string,
		uuid_v4: () -> string,
	},
"#,
    build,
    frozen: true,
};

fn build(b: &Build) -> mlua::Result<LuaValue> {
    table(b.lua).map(LuaValue::Table)
}

fn table(lua: &Lua) -> mlua::Result<Table> {
    use hmac::Mac;
    use sha2::Digest;
    let t = lua.create_table()?;
    t.raw_set(
        "sha256",
        lua.create_function(|_, s: mlua::String| Ok(hex::encode(sha2::Sha256::digest(s.as_bytes()))))?,
    )?;
    t.raw_set(
        "hmac_sha256",
        lua.create_function(|_, (key, msg): (mlua::String, mlua::String)| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key.as_bytes()).map_err(mlua::Error::external)?;
            mac.update(&msg.as_bytes());
            Ok(hex::encode(mac.finalize().into_bytes()))
        })?,
    )?;
    t.raw_set("md5", lua.create_function(|_, s: mlua::String| Ok(hex::encode(md5::Md5::digest(s.as_bytes()))))?)?;
    t.raw_set("uuid_v4", lua.create_function(|_, ()| Ok(uuid::Uuid::new_v4().to_string()))?)?;
    Ok(t)
}
