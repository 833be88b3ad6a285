//! Events between JSON text and the VM on Luau's own stack.
//!
//! mlua's safe API keeps every value it hands out as a reference into a side thread:
//! each string, table and field set or read moves values between stacks and counts
//! references. Profiled on a simple plugin, that bookkeeping was most of a worker's time
//! per event. Here an event is built (and written) with the C API directly: a table is
//! created, filled and left on the stack, and a value is read where it lies. The rules
//! are mlua's own, so plugins see the same values either way (the tests in the parent
//! module hold the two paths to the same output): numbers as mlua pushes and reads them,
//! `null` as `lua.null()`, arrays marked with mlua's array metatable and written as
//! arrays of their sequence, any other table as an object with string keys.
//!
//! Bounds: JSON text is nested at most as deep as its parser allows (the caller measures
//! it first); a value is written only down to [`MAX_DEPTH`] and up to the byte limit,
//! checked as it is written, so a table that refers to itself, or shares a table
//! exponentially often, stops at the first step past either.

use std::ffi::c_int;

use mlua::ffi;
use mlua::{Lua, LuaSerdeExt, Value as LuaValue};
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use sluice_schema::json::MAX_DEPTH;

use super::ConvertError;

/// JSON text as a Lua value, built on the VM's stack.
pub(super) fn push_json(lua: &Lua, text: &str) -> mlua::Result<LuaValue> {
    let mut failed: Option<String> = None;
    // SAFETY: the closure runs on the VM's own (locked) state with the array metatable
    // as its one argument; it leaves exactly one value (or none, on failure) above it,
    // removes the argument, and raises no error of its own (Luau may raise memory
    // errors, which `exec_raw` catches).
    let value = unsafe {
        lua.exec_raw::<LuaValue>(lua.array_metatable(), |state| {
            let base = ffi::lua_gettop(state);
            let mut de = serde_json::Deserializer::from_str(text);
            let pushed = Push { state, array_mt: base }.deserialize(&mut de).and_then(|()| de.end());
            match pushed {
                Ok(()) => ffi::lua_remove(state, base),
                Err(e) => {
                    failed = Some(e.to_string());
                    ffi::lua_settop(state, base - 1);
                }
            }
        })?
    };
    match failed {
        Some(e) => Err(mlua::Error::runtime(e)),
        None => Ok(value),
    }
}

/// A Lua value as JSON text, read off the VM's stack, within `max_bytes`.
pub(super) fn write_json(lua: &Lua, v: &LuaValue, max_bytes: usize) -> Result<String, ConvertError> {
    let mut out = Vec::with_capacity(1024);
    let mut result = Ok(());
    // SAFETY: the closure reads the value and the array metatable it is given as
    // arguments, keeps the stack balanced (each push popped), and leaves it as it
    // found it.
    let ran = unsafe {
        lua.exec_raw::<()>((v.clone(), lua.array_metatable()), |state| {
            let top = ffi::lua_gettop(state);
            let writer = Writer { state, array_mt: top, max: max_bytes };
            result = writer.value(&mut out, top - 1, 0);
            ffi::lua_settop(state, top - 2);
        })
    };
    if ran.is_err() {
        // Only a stack that cannot grow fails here: as deep as the walk may go.
        return Err(ConvertError::TooDeep);
    }
    result?;
    // Every string written was checked to be UTF-8, and the rest is ASCII.
    Ok(String::from_utf8(out).expect("JSON text written from UTF-8 strings"))
}

/// Pushes one value per deserialized value.
#[derive(Clone, Copy)]
struct Push {
    state: *mut ffi::lua_State,
    /// Stack index of mlua's array metatable.
    array_mt: c_int,
}

impl Push {
    fn room<E: serde::de::Error>(self) -> Result<(), E> {
        // SAFETY: the state is live for the whole push (see `push_json`).
        match unsafe { ffi::lua_checkstack(self.state, 3) } {
            0 => Err(E::custom("value nests too deep for the VM's stack")),
            _ => Ok(()),
        }
    }

    fn number<E>(self, n: f64) -> Result<(), E> {
        // mlua pushes every number, integer or not, as a Luau number.
        // SAFETY: as in `room`, with room made by the caller.
        unsafe { ffi::lua_pushnumber(self.state, n) };
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Push {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Push {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.room()?;
        // SAFETY: room was made just above.
        unsafe { ffi::lua_pushboolean(self.state, c_int::from(v)) };
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.room()?;
        self.number(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.room()?;
        self.number(v as f64)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.room()?;
        self.number(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.room()?;
        // SAFETY: room was made; Luau copies the bytes.
        unsafe { ffi::lua_pushlstring(self.state, v.as_ptr().cast(), v.len()) };
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.room()?;
        // SAFETY: room was made; `lua.null()` is the null light userdata.
        unsafe { ffi::lua_pushlightuserdata(self.state, std::ptr::null_mut()) };
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.room()?;
        let hint = c_int::try_from(seq.size_hint().unwrap_or(0)).unwrap_or(0);
        // SAFETY: room was made for the table and its metatable; each element pushed
        // by the seed is stored and popped by `lua_rawseti`.
        unsafe {
            ffi::lua_createtable(self.state, hint, 0);
            ffi::lua_pushvalue(self.state, self.array_mt);
            ffi::lua_setmetatable(self.state, -2);
        }
        let mut i: c_int = 1;
        while seq.next_element_seed(self)?.is_some() {
            // SAFETY: the element is on top, its table just below.
            unsafe { ffi::lua_rawseti_(self.state, -2, i) };
            i = i.checked_add(1).ok_or_else(|| A::Error::custom("array too long"))?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.room()?;
        let hint = c_int::try_from(map.size_hint().unwrap_or(0)).unwrap_or(0);
        // SAFETY: room was made; key and value pushed by the seeds are stored and
        // popped by `lua_rawset`.
        unsafe { ffi::lua_createtable(self.state, 0, hint) };
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
            // SAFETY: key and value are on top, their table just below.
            unsafe { ffi::lua_rawset(self.state, -3) };
        }
        Ok(())
    }
}

struct Writer {
    state: *mut ffi::lua_State,
    /// Stack index of mlua's array metatable.
    array_mt: c_int,
    max: usize,
}

impl Writer {
    /// Writes the value at stack index `idx` (absolute).
    fn value(&self, out: &mut Vec<u8>, idx: c_int, depth: usize) -> Result<(), ConvertError> {
        let state = self.state;
        // SAFETY (this function): `idx` is a live absolute index on the VM's stack; every
        // push below is matched by a pop before returning, and room is made first.
        match unsafe { ffi::lua_type(state, idx) } {
            ffi::LUA_TNIL => out.extend_from_slice(b"null"),
            ffi::LUA_TBOOLEAN => {
                let b = unsafe { ffi::lua_toboolean(state, idx) } != 0;
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
            ffi::LUA_TNUMBER => {
                // mlua's reading: integral numbers are integers, the rest floats
                // (written by serde_json, non-finite ones as null).
                if unsafe { ffi::lua_isinteger(state, idx) } != 0 {
                    let i = unsafe { ffi::lua_tointeger(state, idx) };
                    serde_json::to_writer(&mut *out, &i).expect("writing to memory");
                } else {
                    let n = unsafe { ffi::lua_tonumber(state, idx) };
                    serde_json::to_writer(&mut *out, &n).expect("writing to memory");
                }
            }
            ffi::LUA_TSTRING => {
                let s = self.string(idx)?;
                serde_json::to_writer(&mut *out, s).expect("writing to memory");
            }
            ffi::LUA_TLIGHTUSERDATA if unsafe { ffi::lua_tolightuserdata(state, idx) }.is_null() => {
                out.extend_from_slice(b"null")
            }
            ffi::LUA_TTABLE => self.table(out, idx, depth)?,
            other => return Err(ConvertError::Unsupported(type_name(other))),
        }
        if out.len() > self.max {
            return Err(ConvertError::TooLarge(self.max));
        }
        Ok(())
    }

    fn table(&self, out: &mut Vec<u8>, idx: c_int, depth: usize) -> Result<(), ConvertError> {
        let state = self.state;
        if depth >= MAX_DEPTH {
            return Err(ConvertError::TooDeep);
        }
        // SAFETY: as in `value`.
        unsafe {
            if ffi::lua_checkstack(state, 4) == 0 {
                return Err(ConvertError::TooDeep);
            }
            let len = ffi::lua_objlen(state, idx);
            let marked = ffi::lua_getmetatable(state, idx) != 0 && {
                let same = ffi::lua_rawequal(state, -1, self.array_mt) != 0;
                ffi::lua_pop(state, 1);
                same
            };
            if len > 0 || marked {
                out.push(b'[');
                for i in 1..=len {
                    if i > 1 {
                        out.push(b',');
                    }
                    ffi::lua_rawgeti_(state, idx, c_int::try_from(i).map_err(|_| ConvertError::TooLarge(self.max))?);
                    let written = self.value(out, ffi::lua_gettop(state), depth + 1);
                    ffi::lua_pop(state, 1);
                    written?;
                }
                out.push(b']');
                return Ok(());
            }
            out.push(b'{');
            ffi::lua_pushnil(state);
            let mut first = true;
            while ffi::lua_next(state, idx) != 0 {
                let top = ffi::lua_gettop(state);
                let written = self.entry(out, top - 1, top, depth, first);
                first = false;
                if written.is_err() {
                    ffi::lua_pop(state, 2);
                    return written;
                }
                ffi::lua_pop(state, 1);
            }
            out.push(b'}');
        }
        Ok(())
    }

    /// One `"key":value` of an object; the key must be a string (read in place: it is
    /// already one, so `lua_next` is not disturbed).
    fn entry(
        &self,
        out: &mut Vec<u8>,
        key: c_int,
        value: c_int,
        depth: usize,
        first: bool,
    ) -> Result<(), ConvertError> {
        // SAFETY: both indices are live; nothing is pushed.
        let kind = unsafe { ffi::lua_type(self.state, key) };
        if kind != ffi::LUA_TSTRING {
            return Err(ConvertError::KeyNotString(type_name(kind)));
        }
        if !first {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, self.string(key)?).expect("writing to memory");
        out.push(b':');
        self.value(out, value, depth + 1)
    }

    fn string(&self, idx: c_int) -> Result<&str, ConvertError> {
        let mut len = 0usize;
        // SAFETY: the value at `idx` is a string (checked by the callers), which Luau
        // keeps alive while it is on the stack; the bytes are only read meanwhile.
        let bytes = unsafe {
            let p = ffi::lua_tolstring(self.state, idx, &mut len);
            std::slice::from_raw_parts(p.cast::<u8>(), len)
        };
        std::str::from_utf8(bytes).map_err(|_| ConvertError::NotUtf8)
    }
}

fn type_name(kind: c_int) -> &'static str {
    match kind {
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TLIGHTUSERDATA => "lightuserdata",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TVECTOR => "vector",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TUSERDATA => "userdata",
        ffi::LUA_TTHREAD => "thread",
        ffi::LUA_TBUFFER => "buffer",
        _ => "nil",
    }
}
