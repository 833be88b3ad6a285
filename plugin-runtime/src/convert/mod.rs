//! Lua values to JSON and JSON text to Lua values, bounded.
//!
//! Converting is where a plugin can make the host work outside the Lua heap's limit: a
//! table nested ten thousand deep overflows the host's stack, and a few tables that
//! reference each other twice expand exponentially into JSON. So every Lua value is
//! walked first, depth and JSON size counted as it would be written (shared tables once
//! per reference, as the writer will), and refused at the first step past a bound;
//! only then is it converted. JSON text is measured before it is parsed.

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
}

impl From<ConvertError> for mlua::Error {
    fn from(e: ConvertError) -> Self {
        mlua::Error::runtime(e.to_string())
    }
}

/// A Lua value as JSON, if it nests at most [`MAX_DEPTH`] levels and writes to at most
/// `max_bytes`.
pub(crate) fn to_json(lua: &Lua, v: LuaValue, max_bytes: usize) -> mlua::Result<Value> {
    check(&v, max_bytes)?;
    lua.from_value(v)
}

/// The walk alone: what [`to_json`] checks before converting.
pub(crate) fn check(v: &LuaValue, max_bytes: usize) -> Result<(), ConvertError> {
    let mut left = max_bytes;
    walk(v, 0, &mut left, max_bytes)
}

fn spend(left: &mut usize, n: usize, max: usize) -> Result<(), ConvertError> {
    *left = left.checked_sub(n).ok_or(ConvertError::TooLarge(max))?;
    Ok(())
}

fn walk(v: &LuaValue, depth: usize, left: &mut usize, max: usize) -> Result<(), ConvertError> {
    match v {
        LuaValue::String(s) => spend(left, s.as_bytes().len() + 2, max),
        LuaValue::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(ConvertError::TooDeep);
            }
            spend(left, 2, max)?;
            for pair in t.pairs::<LuaValue, LuaValue>() {
                // A pair the iterator cannot read is left to the converter to refuse.
                let Ok((k, v)) = pair else { continue };
                walk(&k, depth + 1, left, max)?;
                spend(left, 2, max)?;
                walk(&v, depth + 1, left, max)?;
            }
            Ok(())
        }
        // Numbers, booleans, nil and the rest write (or fail) in a few bytes.
        _ => spend(left, 24, max),
    }
}

/// JSON text as a Lua value, if its parsed form stays within `max_bytes`.
pub(crate) fn from_json_text(lua: &Lua, text: &str, max_bytes: usize) -> mlua::Result<LuaValue> {
    let cost = measure(text.as_bytes()).map_err(|TooDeep| ConvertError::TooDeep)?.tree_bytes;
    if cost > max_bytes {
        return Err(ConvertError::TooLarge(max_bytes).into());
    }
    let j: Value = serde_json::from_str(text).map_err(mlua::Error::external)?;
    lua.to_value(&j)
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
        assert_eq!(check(&deep, usize::MAX), Err(ConvertError::TooDeep));
        let ok = eval(&lua, &format!("local t = 0 for i = 1, {} do t = {{t}} end return t", MAX_DEPTH));
        let j = to_json(&lua, ok, 1 << 20).unwrap();
        let text = j.to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "what passes reads back");
        let cyclic = eval(&lua, "local t = {} t.self = t return t");
        assert_eq!(check(&cyclic, usize::MAX), Err(ConvertError::TooDeep));
    }

    #[test]
    fn shared_references_are_counted_as_written() {
        let lua = Lua::new();
        // 2^40 leaves once expanded: refused long before.
        let v = eval(&lua, "local t = {'x'} for i = 1, 40 do t = {a = t, b = t} end return t");
        assert_eq!(check(&v, 1 << 20), Err(ConvertError::TooLarge(1 << 20)));
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
}
