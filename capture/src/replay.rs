//! Session replay: snapshot events grouped per session into `$snapshot_items` messages.
//!
//! Every snapshot of one session (and window) in a request becomes one message keyed by
//! the session id, so the replay consumer sees a session's chunks in order. A group too
//! large for one Kafka message is split, rather than failing the request with a 413
//! the SDK cannot do anything about.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::normalize::NormalizedEvent;

const MAX_SESSION_ID_CHARS: usize = 70;
/// Room left in each message for the outer envelope, key and headers.
const ENVELOPE_RESERVE: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplayInvalid {
    #[error("snapshot has no $session_id")]
    MissingSessionId,
    #[error("snapshot $session_id must be 1 to 70 characters of A-Z a-z 0-9 -")]
    InvalidSessionId,
    #[error("snapshot has no $snapshot_data")]
    MissingSnapshotData,
    #[error("a single snapshot item is larger than the message limit")]
    ItemTooLarge,
}

impl ReplayInvalid {
    pub(crate) fn cause(self) -> &'static str {
        match self {
            ReplayInvalid::MissingSessionId => "missing_session_id",
            ReplayInvalid::InvalidSessionId => "invalid_session_id",
            ReplayInvalid::MissingSnapshotData => "missing_snapshot_data",
            ReplayInvalid::ItemTooLarge => "snapshot_item_too_large",
        }
    }
}

pub(crate) fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_SESSION_ID_CHARS && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One `$snapshot_items` message to produce.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplayMessage {
    pub token: String,
    pub distinct_id: String,
    pub session_id: String,
    pub uuid: Uuid,
    pub timestamp: Option<String>,
    /// The `$snapshot_items` event, serialized.
    pub data: String,
}

#[derive(Default)]
struct Group {
    token: String,
    distinct_id: String,
    session_id: String,
    window_id: String,
    uuid: Uuid,
    timestamp: Option<String>,
    extra: Map<String, Value>,
    items: Vec<Value>,
}

/// Groups snapshot events and splits groups to fit `max_message_bytes`. Events that
/// cannot be replay are returned with their reason, to be counted.
pub(crate) fn group(
    events: Vec<NormalizedEvent>,
    max_message_bytes: usize,
) -> (Vec<ReplayMessage>, Vec<ReplayInvalid>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut invalid = Vec::new();
    for ev in events {
        let mut props = match ev.data.get("properties") {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        };
        let session_id = match props.remove("$session_id") {
            Some(Value::String(s)) if valid_session_id(&s) => s,
            None | Some(Value::Null) => {
                invalid.push(ReplayInvalid::MissingSessionId);
                continue;
            }
            Some(_) => {
                invalid.push(ReplayInvalid::InvalidSessionId);
                continue;
            }
        };
        let window_id = match props.remove("$window_id") {
            Some(Value::String(w)) if !w.is_empty() => w,
            _ => session_id.clone(),
        };
        let items = match props.remove("$snapshot_data").or_else(|| props.remove("$snapshot_items")) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => {
                invalid.push(ReplayInvalid::MissingSnapshotData);
                continue;
            }
            Some(item) => vec![item],
        };
        let found = groups.iter().position(|g| {
            g.session_id == session_id
                && g.window_id == window_id
                && g.token == ev.token
                && g.distinct_id == ev.distinct_id
        });
        let group = match found {
            Some(i) => &mut groups[i],
            None => {
                let mut extra = Map::new();
                for k in ["$snapshot_source", "$lib", "$lib_version"] {
                    if let Some(v) = props.get(k) {
                        extra.insert(k.to_string(), v.clone());
                    }
                }
                groups.push(Group {
                    token: ev.token.clone(),
                    distinct_id: ev.distinct_id.clone(),
                    session_id,
                    window_id,
                    uuid: ev.uuid,
                    timestamp: ev.timestamp.clone(),
                    extra,
                    items: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.items.extend(items);
    }

    let mut messages = Vec::new();
    for g in groups {
        let budget = max_message_bytes.saturating_sub(
            ENVELOPE_RESERVE + 3 * (g.token.len() + g.distinct_id.len() + g.session_id.len() + g.window_id.len()),
        );
        let mut chunk: Vec<Value> = Vec::new();
        let mut chunk_bytes = 0;
        let mut chunks: Vec<Vec<Value>> = Vec::new();
        for item in g.items {
            let size = escaped_len(&item.to_string()) + 1;
            if size > budget {
                invalid.push(ReplayInvalid::ItemTooLarge);
                continue;
            }
            if chunk_bytes + size > budget && !chunk.is_empty() {
                chunks.push(std::mem::take(&mut chunk));
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        for (i, items) in chunks.into_iter().enumerate() {
            // Deterministic per chunk, so a retried request produces the same uuids.
            let uuid = if i == 0 { g.uuid } else { Uuid::new_v5(&g.uuid, format!("chunk-{i}").as_bytes()) };
            let mut properties = g.extra.clone();
            properties.insert("distinct_id".into(), json!(g.distinct_id));
            properties.insert("$session_id".into(), json!(g.session_id));
            properties.insert("$window_id".into(), json!(g.window_id));
            properties.insert("$snapshot_items".into(), Value::Array(items));
            let mut event = json!({
                "event": "$snapshot_items",
                "uuid": uuid.to_string(),
                "distinct_id": g.distinct_id,
                "properties": properties,
            });
            if let Some(ts) = &g.timestamp {
                event["timestamp"] = json!(ts);
            }
            messages.push(ReplayMessage {
                token: g.token.clone(),
                distinct_id: g.distinct_id.clone(),
                session_id: g.session_id.clone(),
                uuid,
                timestamp: g.timestamp.clone(),
                data: event.to_string(),
            });
        }
    }
    (messages, invalid)
}

/// Length of JSON text once embedded as a JSON string (the message's `data` field).
fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::request::Endpoint;

    fn snap(session: &str, window: Option<&str>, data: Value) -> NormalizedEvent {
        let mut props = json!({"$session_id": session, "$snapshot_data": data, "$snapshot_source": "web"});
        if let Some(w) = window {
            props["$window_id"] = json!(w);
        }
        let uuid = "0190a7e8-1d2b-7c3d-8e4f-123456789abc";
        normalize(
            json!({"event":"$snapshot","distinct_id":"d","token":"t","uuid":uuid,"properties":props}),
            None,
            Endpoint::Replay,
        )
        .unwrap()
    }

    fn items_of(m: &ReplayMessage) -> Vec<Value> {
        let v: Value = serde_json::from_str(&m.data).unwrap();
        v["properties"]["$snapshot_items"].as_array().unwrap().clone()
    }

    #[test]
    fn groups_by_session_not_by_first_event() {
        let (msgs, bad) = group(
            vec![
                snap("s1", None, json!([{"a":1}])),
                snap("s2", None, json!({"b":2})),
                snap("s1", None, json!([{"c":3},{"d":4}])),
            ],
            1_000_000,
        );
        assert!(bad.is_empty());
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].session_id, "s1");
        assert_eq!(items_of(&msgs[0]), vec![json!({"a":1}), json!({"c":3}), json!({"d":4})]);
        assert_eq!(msgs[1].session_id, "s2");
        assert_eq!(items_of(&msgs[1]), vec![json!({"b":2})]);
        let v: Value = serde_json::from_str(&msgs[0].data).unwrap();
        assert_eq!(v["event"], "$snapshot_items");
        assert_eq!(v["properties"]["$window_id"], "s1", "window defaults to the session");
        assert_eq!(v["properties"]["$snapshot_source"], "web");
    }

    #[test]
    fn windows_of_one_session_stay_apart() {
        let (msgs, _) = group(vec![snap("s1", Some("w1"), json!([1])), snap("s1", Some("w2"), json!([2]))], 1_000_000);
        assert_eq!(msgs.len(), 2);
    }

    #[test]
    fn invalid_sessions_are_reported() {
        let mut no_session = snap("s", None, json!([1]));
        no_session.data["properties"].as_object_mut().unwrap().remove("$session_id");
        let (msgs, bad) = group(
            vec![
                snap("bad id!", None, json!([1])),
                snap(&"x".repeat(71), None, json!([1])),
                no_session,
                snap("ok", None, Value::Null),
            ],
            1_000_000,
        );
        assert!(msgs.is_empty());
        assert_eq!(
            bad,
            vec![
                ReplayInvalid::InvalidSessionId,
                ReplayInvalid::InvalidSessionId,
                ReplayInvalid::MissingSessionId,
                ReplayInvalid::MissingSnapshotData
            ]
        );
    }

    #[test]
    fn large_groups_are_split_in_order_with_distinct_uuids() {
        let items: Vec<Value> = (0..100).map(|i| json!({"i": i, "pad": "\"q\"".repeat(200)})).collect();
        let limit = 40_000;
        let (msgs, bad) = group(vec![snap("s", None, Value::Array(items.clone()))], limit);
        assert!(bad.is_empty());
        assert!(msgs.len() > 2, "{} messages", msgs.len());
        let all: Vec<Value> = msgs.iter().flat_map(items_of).collect();
        assert_eq!(all, items, "every item once, in order");
        for m in &msgs {
            assert!(serde_json::to_string(&m.data).unwrap().len() < limit - ENVELOPE_RESERVE);
        }
        let uuids: std::collections::HashSet<_> = msgs.iter().map(|m| m.uuid).collect();
        assert_eq!(uuids.len(), msgs.len());
        let (again, _) = group(vec![snap("s", None, Value::Array(items))], limit);
        assert_eq!(
            again.iter().map(|m| m.uuid).collect::<Vec<_>>(),
            msgs.iter().map(|m| m.uuid).collect::<Vec<_>>(),
            "deterministic"
        );
    }

    #[test]
    fn an_item_larger_than_a_message_is_reported() {
        let (msgs, bad) = group(vec![snap("s", None, json!([{"big": "x".repeat(50_000)}, {"small": 1}]))], 20_000);
        assert_eq!(bad, vec![ReplayInvalid::ItemTooLarge]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(items_of(&msgs[0]), vec![json!({"small": 1})]);
    }
}
