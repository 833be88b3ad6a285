//! Stage 3: one parsed event, validated on its own, in the shape every later stage relies on.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::request::Endpoint;
use crate::token::{self, TokenError};

const MAX_DISTINCT_ID_CHARS: usize = 200;

/// An event that passed validation: what routing and producing need, plus the event
/// itself (`data`) with the uuid capture settled on written into it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormalizedEvent {
    pub uuid: Uuid,
    pub distinct_id: String,
    pub token: String,
    pub event: String,
    pub timestamp: Option<String>,
    pub data: Map<String, Value>,
}

impl NormalizedEvent {
    pub(crate) fn is_snapshot(&self) -> bool {
        self.event == "$snapshot" || self.event == "$snapshot_items"
    }
}

/// Why one event of a request was dropped. Each is a `cause` label of the drop metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event has no name")]
    MissingEventName,
    #[error("event has no distinct_id")]
    MissingDistinctId,
    #[error("event's distinct_id is empty")]
    EmptyDistinctId,
    #[error("event's uuid is not a usable UUID")]
    Uuid,
    #[error("event's properties are not an object")]
    Properties,
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl Invalid {
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            Invalid::NotAnObject => "not_an_object",
            Invalid::MissingEventName => "missing_event_name",
            Invalid::MissingDistinctId => "missing_distinct_id",
            Invalid::EmptyDistinctId => "empty_distinct_id",
            Invalid::Uuid => "invalid_uuid",
            Invalid::Properties => "invalid_properties",
            Invalid::Token(_) => "invalid_token",
        }
    }
}

pub(crate) fn normalize(
    value: Value,
    batch_token: Option<&Value>,
    route: Endpoint,
) -> Result<NormalizedEvent, Invalid> {
    let Value::Object(mut data) = value else {
        return Err(Invalid::NotAnObject);
    };

    match data.get("properties") {
        None | Some(Value::Null) => {
            data.insert("properties".into(), Value::Object(Map::new()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(Invalid::Properties),
    }

    let event = match data.get("event") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        // `/engage` carries person updates without a name: they are identifies.
        None | Some(Value::Null) if route == Endpoint::Engage => {
            data.insert("event".into(), Value::String("$identify".into()));
            "$identify".to_string()
        }
        _ => return Err(Invalid::MissingEventName),
    };

    let raw_id = ["distinct_id", "$distinct_id"]
        .iter()
        .find_map(|k| data.get(*k).filter(|v| !v.is_null()))
        .or_else(|| data["properties"].get("distinct_id").filter(|v| !v.is_null()))
        .ok_or(Invalid::MissingDistinctId)?;
    let distinct_id = normalize_distinct_id(raw_id)?;

    let token = token::find(batch_token, &data)?.to_string();

    let uuid = match data.get("uuid") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(s)) => Uuid::parse_str(s.trim()).ok().filter(|u| !u.is_nil()).ok_or(Invalid::Uuid)?,
        Some(_) => return Err(Invalid::Uuid),
    };
    data.insert("uuid".into(), Value::String(uuid.to_string()));

    let timestamp = match data.get("timestamp") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };

    Ok(NormalizedEvent { uuid, distinct_id, token, event, timestamp, data })
}

/// Strings are kept; other JSON values become their JSON text (objects with sorted
/// keys, so one id always reads the same). Truncated to 200 characters, NUL replaced.
pub(crate) fn normalize_distinct_id(raw: &Value) -> Result<String, Invalid> {
    let text = match raw {
        Value::String(s) => s.clone(),
        // serde_json's default map is ordered by key, so this text is canonical.
        other => other.to_string(),
    };
    if text.trim().is_empty() {
        return Err(Invalid::EmptyDistinctId);
    }
    let mut id: String = if text.chars().nth(MAX_DISTINCT_ID_CHARS).is_some() {
        text.chars().take(MAX_DISTINCT_ID_CHARS).collect()
    } else {
        text
    };
    if id.contains('\0') {
        id = id.replace('\0', "\u{fffd}");
    }
    Ok(id)
}

/// The client's send time: the batch's `sent_at`/`sentAt`, else the query's `_` (epoch ms).
pub(crate) fn sent_at(batch_sent_at: Option<&Value>, query_ms: Option<i64>) -> Option<OffsetDateTime> {
    if let Some(Value::String(s)) = batch_sent_at {
        if let Ok(t) = OffsetDateTime::parse(s.trim(), &Rfc3339) {
            return Some(t);
        }
    }
    let ms = query_ms?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn norm(v: Value) -> Result<NormalizedEvent, Invalid> {
        normalize(v, None, Endpoint::Events)
    }

    #[test]
    fn distinct_id_rules() {
        assert_eq!(normalize_distinct_id(&json!("user 1")).unwrap(), "user 1");
        assert_eq!(normalize_distinct_id(&json!(23)).unwrap(), "23");
        assert_eq!(normalize_distinct_id(&json!(1.5)).unwrap(), "1.5");
        assert_eq!(normalize_distinct_id(&json!(true)).unwrap(), "true");
        assert_eq!(normalize_distinct_id(&json!({"b":1,"a":[2]})).unwrap(), r#"{"a":[2],"b":1}"#);
        assert_eq!(normalize_distinct_id(&json!("a\0b")).unwrap(), "a\u{fffd}b");
        let long = "é".repeat(250);
        assert_eq!(normalize_distinct_id(&json!(long)).unwrap().chars().count(), 200);
        assert_eq!(normalize_distinct_id(&json!("   ")).unwrap_err(), Invalid::EmptyDistinctId);
        assert_eq!(normalize_distinct_id(&json!("")).unwrap_err(), Invalid::EmptyDistinctId);
    }

    #[test]
    fn distinct_id_sources() {
        let e = norm(json!({"event":"e","$distinct_id":"top","token":"t"})).unwrap();
        assert_eq!(e.distinct_id, "top");
        let e = norm(json!({"event":"e","distinct_id":null,"properties":{"distinct_id":"prop","token":"t"}})).unwrap();
        assert_eq!(e.distinct_id, "prop");
        assert_eq!(norm(json!({"event":"e","token":"t"})).unwrap_err(), Invalid::MissingDistinctId);
    }

    #[test]
    fn properties_null_or_absent_become_empty_objects() {
        for v in [
            json!({"event":"e","distinct_id":"d","token":"t","properties":null}),
            json!({"event":"e","distinct_id":"d","token":"t"}),
        ] {
            assert_eq!(norm(v).unwrap().data["properties"], json!({}));
        }
        assert_eq!(
            norm(json!({"event":"e","distinct_id":"d","token":"t","properties":"x"})).unwrap_err(),
            Invalid::Properties
        );
    }

    #[test]
    fn event_name_required_except_on_engage() {
        assert_eq!(norm(json!({"distinct_id":"d","token":"t"})).unwrap_err(), Invalid::MissingEventName);
        assert_eq!(norm(json!({"event":"","distinct_id":"d","token":"t"})).unwrap_err(), Invalid::MissingEventName);
        assert_eq!(norm(json!({"event":7,"distinct_id":"d","token":"t"})).unwrap_err(), Invalid::MissingEventName);
        let e = normalize(json!({"$distinct_id":"d","$token":"t","$set":{"a":1}}), None, Endpoint::Engage).unwrap();
        assert_eq!(e.event, "$identify");
        assert_eq!(e.data["event"], "$identify");
        assert_eq!(e.data["$set"], json!({"a":1}), "$set passes through");
    }

    #[test]
    fn uuid_kept_generated_or_refused_and_written_into_data() {
        let id = "0190a7e8-1d2b-7c3d-8e4f-123456789abc";
        let e = norm(json!({"event":"e","distinct_id":"d","token":"t","uuid":id})).unwrap();
        assert_eq!(e.uuid.to_string(), id);
        let e = norm(json!({"event":"e","distinct_id":"d","token":"t"})).unwrap();
        assert_eq!(e.uuid.get_version_num(), 7);
        assert_eq!(e.data["uuid"], e.uuid.to_string());
        for bad in [json!("nope"), json!(12), json!("00000000-0000-0000-0000-000000000000")] {
            assert_eq!(norm(json!({"event":"e","distinct_id":"d","token":"t","uuid":bad})).unwrap_err(), Invalid::Uuid);
        }
    }

    #[test]
    fn timestamps_string_or_number() {
        let e = norm(json!({"event":"e","distinct_id":"d","token":"t","timestamp":"2024-01-01T00:00:00+02"})).unwrap();
        assert_eq!(e.timestamp.as_deref(), Some("2024-01-01T00:00:00+02"));
        let e = norm(json!({"event":"e","distinct_id":"d","token":"t","timestamp":1700000000123u64})).unwrap();
        assert_eq!(e.timestamp.as_deref(), Some("1700000000123"));
        let e = norm(json!({"event":"e","distinct_id":"d","token":"t","timestamp":{}})).unwrap();
        assert_eq!(e.timestamp, None);
    }

    #[test]
    fn token_errors_are_per_event() {
        let err = norm(json!({"event":"e","distinct_id":"d"})).unwrap_err();
        assert_eq!(err, Invalid::Token(TokenError::Missing));
        assert_eq!(err.cause(), "invalid_token");
    }

    #[test]
    fn sent_at_sources() {
        let t = sent_at(Some(&json!("2024-05-01T10:00:00.5Z")), Some(1)).unwrap();
        assert_eq!(t.unix_timestamp_nanos(), 1_714_557_600_500_000_000);
        let t = sent_at(Some(&json!("garbage")), Some(1_700_000_000_123)).unwrap();
        assert_eq!(t.unix_timestamp_nanos(), 1_700_000_000_123_000_000);
        assert_eq!(sent_at(None, None), None);
    }
}
