//! Lua values to JSON and JSON text to Lua values, bounded.
//!
//! Converting is where a plugin can make the host work outside the Lua heap's limit: a
//! table nested ten thousand deep overflows the host's stack, and a few tables that
//! reference each other twice expand exponentially into JSON. So a Lua value that
//! becomes a `Value` ([`to_json`]) is walked first, depth and JSON size counted as it
//! would be written (shared tables once per reference, as the writer will), and refused
//! at the first step past a bound; only then is it converted. One written straight to
//! text ([`to_json_text`]) is refused at the first level or byte past its bound as it is
//! written. JSON text is measured before it is parsed.
//!
//! Events cross between text and the VM directly ([`from_json_text`], [`to_json_text`],
//! on Luau's stack: see [`raw`]), with no `serde_json::Value` in between: per event and
//! plugin, that tree was built and dropped twice. Both paths refuse the same values
//! (strings that are not UTF-8, objects with keys that are not strings, functions and
//! other values JSON has no word for) and write the same JSON for the rest.

mod raw;

use mlua::{Lua, LuaSerdeExt, Value as LuaValue};
use serde_json::Value;
use sluice_schema::json::{measure, TooDeep, MAX_DEPTH};

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("value nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("value is larger than {0} bytes as JSON")]
    TooLarge(usize),
    #[error("a {0} has no JSON form")]
    Unsupported(&'static str),
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("a table that is not an array has a {0} key; JSON object keys are strings")]
    KeyNotString(&'static str),
}

impl From<ConvertError> for mlua::Error {
    fn from(e: ConvertError) -> Self {
        mlua::Error::runtime(e.to_string())
    }
}

/// A Lua value as JSON, if it nests at most [`MAX_DEPTH`] levels and writes to at most
/// `max_bytes`.
pub(crate) fn to_json(lua: &Lua, v: LuaValue, max_bytes: usize) -> mlua::Result<Value> {
    check(lua, &v, max_bytes)?;
    lua.from_value(v)
}

/// A Lua value as JSON text, under the same bounds and rules as [`to_json`], written
/// straight from the VM's values.
pub(crate) fn to_json_text(lua: &Lua, v: &LuaValue, max_bytes: usize) -> mlua::Result<String> {
    Ok(raw::write_json(lua, v, max_bytes)?)
}

/// The walk alone: what [`to_json`] checks before converting.
pub(crate) fn check(lua: &Lua, v: &LuaValue, max_bytes: usize) -> Result<(), ConvertError> {
    let mut left = max_bytes;
    walk(v, 0, &mut left, max_bytes, &lua.array_metatable())
}

fn spend(left: &mut usize, n: usize, max: usize) -> Result<(), ConvertError> {
    *left = left.checked_sub(n).ok_or(ConvertError::TooLarge(max))?;
    Ok(())
}

fn walk(v: &LuaValue, depth: usize, left: &mut usize, max: usize, array: &mlua::Table) -> Result<(), ConvertError> {
    match v {
        LuaValue::String(s) => {
            s.to_str().map_err(|_| ConvertError::NotUtf8)?;
            spend(left, s.as_bytes().len() + 2, max)
        }
        LuaValue::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(ConvertError::TooDeep);
            }
            spend(left, 2, max)?;
            // As the writer decides (mlua's rule): a sequence, or a table marked as an
            // array, is written as an array of its sequence; anything else as an object.
            let object = t.raw_len() == 0 && t.metatable().is_none_or(|m| m != *array);
            for pair in t.pairs::<LuaValue, LuaValue>() {
                // A pair the iterator cannot read is left to the converter to refuse.
                let Ok((k, v)) = pair else { continue };
                if object && !matches!(k, LuaValue::String(_)) {
                    return Err(ConvertError::KeyNotString(k.type_name()));
                }
                walk(&k, depth + 1, left, max, array)?;
                spend(left, 2, max)?;
                walk(&v, depth + 1, left, max, array)?;
            }
            Ok(())
        }
        LuaValue::Nil | LuaValue::Boolean(_) | LuaValue::Integer(_) | LuaValue::Number(_) | LuaValue::Vector(_) => {
            spend(left, 24, max)
        }
        LuaValue::LightUserData(ud) if ud.0.is_null() => spend(left, 4, max),
        other => Err(ConvertError::Unsupported(other.type_name())),
    }
}

/// JSON text as a Lua value, if its parsed form stays within `max_bytes`.
pub(crate) fn from_json_text(lua: &Lua, text: &str, max_bytes: usize) -> mlua::Result<LuaValue> {
    let cost = measure(text.as_bytes()).map_err(|TooDeep| ConvertError::TooDeep)?.tree_bytes;
    if cost > max_bytes {
        return Err(ConvertError::TooLarge(max_bytes).into());
    }
    raw::push_json(lua, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(lua: &Lua, code: &str) -> LuaValue {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn deep_tables_are_refused_without_recursing_into_them() {
        let lua = Lua::new();
        let deep = eval(&lua, "local t = {} for i = 1, 10000 do t = {t} end return t");
        assert_eq!(check(&lua, &deep, usize::MAX), Err(ConvertError::TooDeep));
        let ok = eval(&lua, &format!("local t = 0 for i = 1, {} do t = {{t}} end return t", MAX_DEPTH));
        let j = to_json(&lua, ok, 1 << 20).unwrap();
        let text = j.to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "what passes reads back");
        let cyclic = eval(&lua, "local t = {} t.self = t return t");
        assert_eq!(check(&lua, &cyclic, usize::MAX), Err(ConvertError::TooDeep));
    }

    #[test]
    fn shared_references_are_counted_as_written() {
        let lua = Lua::new();
        // 2^40 leaves once expanded: refused long before.
        let v = eval(&lua, "local t = {'x'} for i = 1, 40 do t = {a = t, b = t} end return t");
        assert_eq!(check(&lua, &v, 1 << 20), Err(ConvertError::TooLarge(1 << 20)));
        let small = eval(&lua, "return {a = 'x', b = {1, 2, 3}}");
        let j = to_json(&lua, small, 1 << 20).unwrap();
        assert_eq!(j, serde_json::json!({"a": "x", "b": [1, 2, 3]}));
    }

    #[test]
    fn json_text_is_measured_before_it_is_parsed() {
        let lua = Lua::new();
        let zeros = format!("[{}0]", "0,".repeat(100_000));
        let err = from_json_text(&lua, &zeros, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        assert!(from_json_text(&lua, &zeros, 64 << 20).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(from_json_text(&lua, &deep, usize::MAX).unwrap_err().to_string().contains("deeper"));
    }

    #[test]
    fn text_to_the_vm_and_back_matches_the_value_path() {
        let lua = Lua::new();
        let samples = [
            r#"{"a":null,"b":[],"c":{},"d":[1,2.5,-3,null,"x"],"e":{"f":{"g":[true,false]}}}"#,
            r#"{"big":9007199254740993,"neg":-2147483649,"small":2147483647,"f":1e300,"i":1.0}"#,
            r#"{"s":"quote \" and \\ and \u00e9 and \ud83d\ude00","empty":""}"#,
            r#"[{"a":1},[],"x"]"#,
        ];
        for text in samples {
            let direct = from_json_text(&lua, text, 1 << 20).unwrap();
            let via_value = lua.to_value(&serde_json::from_str::<Value>(text).unwrap()).unwrap();
            let a: Value = serde_json::from_str(&to_json_text(&lua, &direct, 1 << 20).unwrap()).unwrap();
            let b = to_json(&lua, via_value, 1 << 20).unwrap();
            assert_eq!(a, b, "{text}");
        }
    }

    #[test]
    fn what_the_value_path_refused_the_text_path_refuses() {
        let lua = Lua::new();
        for (code, why) in [
            ("return {[5] = 'x'}", "key"),
            ("return {a = function() end}", "no JSON form"),
            ("return {a = '\\255'}", "UTF-8"),
        ] {
            let v = eval(&lua, code);
            let err = to_json_text(&lua, &v, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(why), "{code}: {err}");
            assert!(to_json(&lua, v, 1 << 20).is_err(), "{code}: the value path refuses it too");
        }
    }

    #[test]
    fn the_text_path_stops_at_the_same_bounds() {
        let lua = Lua::new();
        for (code, max, why) in [
            ("local t = {} t.self = t return t", usize::MAX, "deeper"),
            ("local t = {} for i = 1, 10000 do t = {t} end return t", usize::MAX, "deeper"),
            ("local t = {'x'} for i = 1, 40 do t = {a = t, b = t} end return t", 1 << 20, "larger"),
        ] {
            let err = to_json_text(&lua, &eval(&lua, code), max).unwrap_err().to_string();
            assert!(err.contains(why), "{code}: {err}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(from_json_text(&lua, &deep, usize::MAX).is_err());
        assert!(from_json_text(&lua, "{\"a\": [1, 2", usize::MAX).is_err(), "cut text");
        assert!(from_json_text(&lua, "{} {}", usize::MAX).is_err(), "trailing text");
        assert_eq!(lua.load("return 1 + 1").eval::<i64>().unwrap(), 2, "the stack is left usable");
    }
}
