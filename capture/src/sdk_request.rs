//! The one thing capture needs from a `/flags` or `/decide` body: the project's token.
//!
//! The body may hold anything beside it (person and group properties, or an attacker's
//! millions of array slots), so it is read as a stream and everything but the token is
//! skipped without being built: the request's memory is its decoded text, already
//! reserved, and nothing more.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use sluice_schema::json::{measure, TooDeep};

use crate::parse::ParseError;

/// The keys that name the token, in the order they are preferred.
const TOKEN_KEYS: [&str; 3] = ["token", "api_key", "$token"];

/// The token of a JSON body: the first of [`TOKEN_KEYS`] holding a string, if any.
/// A body that is not an object names no token.
pub(crate) fn token(json: &[u8]) -> Result<Option<String>, ParseError> {
    let text = std::str::from_utf8(json).map_err(|_| ParseError::NotUtf8)?;
    // Skipping allocates nothing, but a body nested past what event routes take is
    // refused alike.
    measure(json).map_err(|TooDeep| ParseError::TooDeep)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = de.deserialize_any(Body).and_then(|found| de.end().map(|()| found));
    let mut found = found.map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(found.iter_mut().find_map(Option::take))
}

/// What each of [`TOKEN_KEYS`] held, when it held a string.
type Found = [Option<String>; TOKEN_KEYS.len()];

struct Body;

impl<'de> Visitor<'de> for Body {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key.0 {
                Some(i) => found[i] = map.next_value::<Lenient>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::default())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Found, E> {
        Ok(Found::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Found, E> {
        Ok(Found::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Found, E> {
        Ok(Found::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(Found::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::default())
    }
}

/// A key: its index in [`TOKEN_KEYS`], or `None` for any other; never allocated.
struct Key(Option<usize>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(Key(TOKEN_KEYS.iter().position(|k| *k == key)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A string, or anything else skipped as `None`: a token key holding a tree is no token.
struct Lenient(Option<String>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lenient, D::Error> {
        struct LenientVisitor;
        impl<'de> Visitor<'de> for LenientVisitor {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Lenient, E> {
                Ok(Lenient(Some(s.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Lenient, A::Error> {
                Body.visit_seq(seq).map(|_| Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(LenientVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_key_holding_a_string_wins_wherever_it_is() {
        let t = |s: &str| token(s.as_bytes());
        assert_eq!(t(r#"{"distinct_id":"d","token":"phc_a"}"#), Ok(Some("phc_a".into())));
        assert_eq!(t(r#"{"$token":"phc_c","api_key":"phc_b"}"#), Ok(Some("phc_b".into())));
        assert_eq!(t(r#"{"$token":"phc_c","groups":{"g":[1,{"token":"no"}]}}"#), Ok(Some("phc_c".into())));
        assert_eq!(t(r#"{"token":{"nested":"phc_x"},"api_key":"phc_y"}"#), Ok(Some("phc_y".into())));
        assert_eq!(t(r#"{"token":"phc_\u0041"}"#), Ok(Some("phc_A".into())), "escapes are decoded");
        assert_eq!(t(r#"[{"token":"phc_in_array"}]"#), Ok(None));
        assert_eq!(t("42"), Ok(None));
        assert_eq!(t("{}"), Ok(None));
    }

    #[test]
    fn bad_bodies_are_refused_not_half_read() {
        assert!(matches!(token(br#"{"token":"phc_a""#), Err(ParseError::Json(_))));
        assert!(matches!(token(br#"{"token":"phc_a"} trailing"#), Err(ParseError::Json(_))));
        assert_eq!(token(b"{\"token\":\"\xff\"}"), Err(ParseError::NotUtf8));
        let deep = format!("{{\"token\":\"phc_a\",\"x\":{}0{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(token(deep.as_bytes()), Err(ParseError::TooDeep), "nested as deep as event routes take, no deeper");
    }

    #[test]
    fn a_wide_body_is_skipped_without_building_it() {
        let wide = format!("{{\"token\":\"phc_w\",\"groups\":{{\"g\":[{}0]}}}}", "0,".repeat(1_000_000));
        assert_eq!(token(wide.as_bytes()), Ok(Some("phc_w".into())));
    }
}
