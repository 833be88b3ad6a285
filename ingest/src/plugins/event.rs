//! The event as plugins see it, and what a chain made of it written back into the
//! captured message.

use serde_json::{json, Map, Value};
use sluice_schema::CapturedEvent;
use time::format_description::well_known::Rfc3339;

/// The event as plugins see it: `uuid, event, distinct_id, properties, timestamp,
/// team_id, ip, now, sent_at, $set, $set_once`; and the rest of the client's data, which
/// plugins do not see and [`from_plugin_event`] puts back.
pub(super) fn to_plugin_event(c: &CapturedEvent, team: i64) -> (Value, Map<String, Value>) {
    let mut data: Map<String, Value> = serde_json::from_str(&c.data).unwrap_or_default();
    let mut e = Map::new();
    e.insert("uuid".into(), Value::String(c.uuid.to_string()));
    e.insert("event".into(), Value::String(c.event.clone()));
    e.insert("distinct_id".into(), Value::String(c.distinct_id.clone()));
    e.insert("properties".into(), data.remove("properties").filter(Value::is_object).unwrap_or(json!({})));
    if let Some(t) = &c.timestamp {
        e.insert("timestamp".into(), Value::String(t.clone()));
    }
    e.insert("team_id".into(), json!(team));
    e.insert("ip".into(), Value::String(c.ip.clone()));
    e.insert("now".into(), Value::String(c.now.format(&Rfc3339).expect("UTC times format")));
    if let Some(s) = c.sent_at {
        e.insert("sent_at".into(), Value::String(s.format(&Rfc3339).expect("UTC times format")));
    }
    for key in ["$set", "$set_once"] {
        if let Some(v) = data.remove(key) {
            e.insert(key.into(), v);
        }
    }
    (Value::Object(e), data)
}

/// What a chain made of an event, written back into the captured message's fields and
/// its data (`rest`, from [`to_plugin_event`]): the client's data as the steps then read
/// it, handed on parsed (the message's `data` text is left as it came).
pub(super) fn from_plugin_event(
    c: &mut CapturedEvent,
    mut data: Map<String, Value>,
    mut e: Value,
    succeeded: &[String],
    failed: &[String],
) -> Map<String, Value> {
    if let Some(name) = e.get("event").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        c.event = name.to_string();
        data.insert("event".into(), Value::String(c.event.clone()));
    }
    if let Some(d) = e.get("distinct_id").and_then(Value::as_str).filter(|d| !d.trim().is_empty()) {
        c.distinct_id = d.to_string();
        data.insert("distinct_id".into(), Value::String(c.distinct_id.clone()));
    }
    let mut properties = match e.get_mut("properties").map(Value::take) {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    if !succeeded.is_empty() {
        properties.insert("$plugins_succeeded".into(), json!(succeeded));
    }
    if !failed.is_empty() {
        properties.insert("$plugins_failed".into(), json!(failed));
    }
    data.insert("properties".into(), Value::Object(properties));
    for key in ["$set", "$set_once"] {
        match e.get_mut(key).map(Value::take) {
            Some(v) if v.is_object() => {
                data.insert(key.into(), v);
            }
            _ => {
                data.remove(key);
            }
        }
    }
    c.timestamp = match e.get("timestamp") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(ip) = e.get("ip").and_then(Value::as_str) {
        c.ip = ip.to_string();
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_goes_to_plugins_and_comes_back() {
        let mut c = CapturedEvent {
            uuid: uuid::Uuid::nil(),
            distinct_id: "d".into(),
            ip: "1.2.3.4".into(),
            data: json!({"event": "e", "properties": {"a": 1}, "$set": {"s": 1}}).to_string(),
            now: time::macros::datetime!(2026-01-01 00:00 UTC),
            sent_at: None,
            token: "phc".into(),
            event: "e".into(),
            timestamp: Some("2026-01-01T00:00:00Z".into()),
            historical_migration: false,
        };
        let (mut e, rest) = to_plugin_event(&c, 7);
        assert_eq!(e["team_id"], 7);
        assert_eq!(e["properties"], json!({"a": 1}));
        assert_eq!(e["$set"], json!({"s": 1}));
        e["event"] = json!("renamed");
        e["properties"]["b"] = json!(2);
        e.as_object_mut().unwrap().remove("$set");
        let data = Value::Object(from_plugin_event(&mut c, rest, e, &["p (1)".into()], &["q (2)".into()]));
        assert_eq!(c.event, "renamed");
        assert_eq!(
            data["properties"],
            json!({"a": 1, "b": 2, "$plugins_succeeded": ["p (1)"], "$plugins_failed": ["q (2)"]})
        );
        assert!(data.get("$set").is_none());
        assert_eq!(c.timestamp.as_deref(), Some("2026-01-01T00:00:00Z"));
    }
}
