//! Stage 2: from JSON text to the request's events, tolerating what SDKs really send.
//!
//! A JSON tree takes far more memory than its text, so the text is measured first
//! ([`measure`]) and the tree is built only once the memory it will take is reserved.

use std::borrow::Cow;

use serde_json::{Map, Value};

use sluice_schema::json::{measure, TooDeep, MAX_DEPTH};

use crate::budget::{BudgetError, Reservation};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    #[error("payload must be an event object, an array of events, or {{\"api_key\", \"batch\": [...]}}")]
    Shape,
    #[error("payload nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(transparent)]
    Memory(#[from] BudgetError),
}

impl ParseError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ParseError::NotUtf8 => "invalid_utf8",
            ParseError::Json(_) => "invalid_json",
            ParseError::Shape => "invalid_payload_shape",
            ParseError::TooDeep => "too_deep",
            ParseError::Memory(e) => e.code(),
        }
    }
}

/// A request's events with the envelope fields that apply to all of them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ParsedRequest {
    /// The batch's `api_key`/`token`, unvalidated.
    pub token: Option<Value>,
    /// The batch's `sent_at`/`sentAt`, unvalidated.
    pub sent_at: Option<Value>,
    pub historical_migration: bool,
    /// Each element is validated on its own later; a bad one does not sink the rest.
    pub events: Vec<Value>,
}

/// Measures, reserves what the tree will take, then parses.
pub(crate) fn parse(bytes: &[u8], memory: &mut Reservation) -> Result<ParsedRequest, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    memory.hold(measure(bytes).map_err(|TooDeep| ParseError::TooDeep)?.tree_bytes)?;
    parse_text(text)
}

fn parse_text(text: &str) -> Result<ParsedRequest, ParseError> {
    let text = replace_lone_surrogates(text);
    let value: Value = serde_json::from_str(&text).map_err(|e| ParseError::Json(e.to_string()))?;
    match value {
        Value::Array(events) => Ok(ParsedRequest { events, ..Default::default() }),
        Value::Object(mut obj) => match obj.remove("batch") {
            Some(Value::Array(events)) => Ok(ParsedRequest {
                token: take_first(&mut obj, &["api_key", "token"]),
                sent_at: take_first(&mut obj, &["sent_at", "sentAt"]),
                historical_migration: obj.get("historical_migration").is_some_and(|v| v.as_bool() == Some(true)),
                events,
            }),
            Some(_) => Err(ParseError::Shape),
            None => Ok(ParsedRequest {
                // A single event may carry the api_key beside its fields (legacy SDKs).
                token: None,
                sent_at: None,
                historical_migration: false,
                events: vec![Value::Object(obj)],
            }),
        },
        _ => Err(ParseError::Shape),
    }
}

fn take_first(obj: &mut Map<String, Value>, keys: &[&str]) -> Option<Value> {
    keys.iter().find_map(|k| obj.remove(*k).filter(|v| !v.is_null()))
}

/// JavaScript strings may hold unpaired UTF-16 surrogates, and SDKs serialize them as
/// `\ud800` escapes that strict JSON parsers reject, failing the whole request. Each
/// lone surrogate escape becomes `\ufffd`; valid pairs are left alone.
pub(crate) fn replace_lone_surrogates(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', b.get(i..).unwrap_or_default()) {
        i += at;
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, including `\\`, is two bytes
            continue;
        }
        let Some(unit) = hex4(b, i + 2) else {
            i += 2;
            continue;
        };
        let lone = match unit {
            0xD800..=0xDBFF => {
                let low =
                    (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u')).then(|| hex4(b, i + 8)).flatten();
                if matches!(low, Some(0xDC00..=0xDFFF)) {
                    i += 12;
                    continue;
                }
                true
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..i]);
            o.push_str("\\ufffd");
            copied = i + 6;
        }
        i += 6;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = b.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u16::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use serde_json::json;

    fn parse(bytes: &[u8]) -> Result<ParsedRequest, ParseError> {
        super::parse(bytes, &mut MemoryBudget::new(1 << 30, 1 << 30).reservation())
    }

    #[test]
    fn hostile_shapes_are_refused_before_the_tree_is_built() {
        let zeros = format!("[{}]", vec!["0"; 1_000_000].join(","));
        let budget = MemoryBudget::new(1 << 30, 16 << 20);
        let err = super::parse(zeros.as_bytes(), &mut budget.reservation()).unwrap_err();
        assert_eq!(err, ParseError::Memory(BudgetError::RequestTooLarge { limit: 16 << 20 }));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(deep.as_bytes()).unwrap_err(), ParseError::TooDeep);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse(ok.as_bytes()).unwrap().events.len(), 1, "127 levels are what serde_json takes");
    }

    #[test]
    fn array_of_events() {
        let p = parse(br#"[{"event":"a"},{"event":"b"}]"#).unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.token, None);
    }

    #[test]
    fn batch_envelope_with_either_spelling() {
        let p = parse(br#"{"api_key":"phc_1","batch":[{"event":"a"}],"sent_at":"2024-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(p.token, Some(json!("phc_1")));
        assert_eq!(p.sent_at, Some(json!("2024-01-01T00:00:00Z")));
        assert!(!p.historical_migration);
        let p = parse(br#"{"token":"phc_2","batch":[],"sentAt":"x","historical_migration":true}"#).unwrap();
        assert_eq!(p.token, Some(json!("phc_2")));
        assert_eq!(p.sent_at, Some(json!("x")));
        assert!(p.historical_migration);
    }

    #[test]
    fn single_event_object() {
        let p = parse(br#"{"event":"a","properties":null,"timestamp":1700000000000}"#).unwrap();
        assert_eq!(p.events, vec![json!({"event":"a","properties":null,"timestamp":1700000000000u64})]);
    }

    #[test]
    fn other_shapes_are_rejected() {
        assert_eq!(parse(b"42").unwrap_err(), ParseError::Shape);
        assert_eq!(parse(br#"{"batch":"nope"}"#).unwrap_err(), ParseError::Shape);
        assert_eq!(parse(br#"{"event":"#).unwrap_err().code(), "invalid_json");
        assert_eq!(parse(b"\xff\xfe").unwrap_err(), ParseError::NotUtf8);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let p = parse(br#"[{"event":"a\ud800b","properties":{"k":"\udc00","pair":"\ud83d\ude00","esc":"\\ud800"}}]"#)
            .unwrap();
        let e = &p.events[0];
        assert_eq!(e["event"], "a\u{fffd}b");
        assert_eq!(e["properties"]["k"], "\u{fffd}");
        assert_eq!(e["properties"]["pair"], "😀");
        assert_eq!(e["properties"]["esc"], "\\ud800", "an escaped backslash is not an escape");
    }

    #[test]
    fn surrogate_fix_borrows_when_nothing_to_fix() {
        assert!(matches!(replace_lone_surrogates(r#"{"a":"\u00e9 \ud83d\ude00"}"#), Cow::Borrowed(_)));
        assert_eq!(replace_lone_surrogates(r#""\uD800\uD800""#), r#""\ufffd\ufffd""#);
        assert_eq!(replace_lone_surrogates(r#""\ud800"#), r#""\ufffd"#, "at the very end");
    }
}
