//! `ctx.geoip.lookup(ip)`, from a MaxMind City database the process opened once.

use std::sync::Arc;

use mlua::{LuaSerdeExt, Value as LuaValue};
use serde_json::{Map, Value};

use super::{Build, Namespace};

pub(super) const GEOIP: Namespace = Namespace {
    name: "geoip",
    declarations: r#"type GeoIpRecord = {
	city_name: string?,
	country_code: string?,
	country_name: string?,
	continent_code: string?,
	continent_name: string?,
	subdivision_1_code: string?,
	subdivision_1_name: string?,
	postal_code: string?,
	latitude: number?,
	longitude: number?,
	time_zone: string?,
	accuracy_radius: number?,
}
"#,
    field: r#"	geoip: { lookup: (ip: string) -> GeoIpRecord? },
"#,
    build,
    frozen: true,
};

/// A MaxMind City database, read once per process and shared by its VMs.
pub type GeoIp = Arc<maxminddb::Reader<Vec<u8>>>;

/// Opens a MaxMind City (or GeoLite2-City) database file.
pub fn open_geoip(path: &std::path::Path) -> Result<GeoIp, String> {
    maxminddb::Reader::open_readfile(path).map(Arc::new).map_err(|e| format!("{}: {e}", path.display()))
}

/// `ctx.geoip.lookup(ip)`: `{city_name, country_code, country_name, continent_code,
/// continent_name, subdivision_1_code, subdivision_1_name, postal_code, latitude,
/// longitude, time_zone, accuracy_radius}` (what is known), or nil.
fn build(b: &Build) -> mlua::Result<LuaValue> {
    let (lua, host) = (b.lua, b.host);
    let t = lua.create_table()?;
    let db = host.inner.geoip.clone();
    t.raw_set(
        "lookup",
        lua.create_function(move |lua, ip: String| {
            let Some(db) = &db else { return Err(mlua::Error::runtime("no geoip database is configured")) };
            let Ok(addr) = ip.trim().parse::<std::net::IpAddr>() else { return Ok(LuaValue::Nil) };
            let record: Option<Value> = db.lookup(addr).and_then(|r| r.decode()).map_err(mlua::Error::external)?;
            match record {
                Some(r) => lua.to_value(&geoip_fields(&r)),
                None => Ok(LuaValue::Nil),
            }
        })?,
    )?;
    Ok(LuaValue::Table(t))
}

fn geoip_fields(r: &Value) -> Value {
    let name = |v: &Value| v.get("names").and_then(|n| n.get("en")).cloned();
    let sub = r.get("subdivisions").and_then(|s| s.get(0));
    let location = r.get("location");
    let mut out = Map::new();
    for (key, value) in [
        ("city_name", r.get("city").and_then(name)),
        ("country_code", r.get("country").and_then(|c| c.get("iso_code")).cloned()),
        ("country_name", r.get("country").and_then(name)),
        ("continent_code", r.get("continent").and_then(|c| c.get("code")).cloned()),
        ("continent_name", r.get("continent").and_then(name)),
        ("subdivision_1_code", sub.and_then(|s| s.get("iso_code")).cloned()),
        ("subdivision_1_name", sub.and_then(name)),
        ("postal_code", r.get("postal").and_then(|p| p.get("code")).cloned()),
        ("latitude", location.and_then(|l| l.get("latitude")).cloned()),
        ("longitude", location.and_then(|l| l.get("longitude")).cloned()),
        ("time_zone", location.and_then(|l| l.get("time_zone")).cloned()),
        ("accuracy_radius", location.and_then(|l| l.get("accuracy_radius")).cloned()),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), v);
        }
    }
    Value::Object(out)
}
