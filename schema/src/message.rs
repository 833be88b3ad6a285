//! The message capture writes and ingest reads.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub const HEADER_TOKEN: &str = "token";
pub const HEADER_DISTINCT_ID: &str = "distinct_id";
pub const HEADER_EVENT: &str = "event";
pub const HEADER_UUID: &str = "uuid";
pub const HEADER_NOW: &str = "now";

/// One accepted event as it travels on the ingestion topics.
///
/// `data` is the event as the client sent it (after capture's normalization), serialized
/// as a JSON string: ingest parses it lazily and the outer fields win over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedEvent {
    pub uuid: Uuid,
    pub distinct_id: String,
    pub ip: String,
    pub data: String,
    /// When capture received the request.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// The client's idea of when it sent the request; ingest uses it to correct clock skew.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<OffsetDateTime>,
    pub token: String,
    pub event: String,
    /// The client's `timestamp` as sent (RFC 3339 text or epoch digits); ingest interprets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub historical_migration: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Partition key of an event: all events of one person of one team land on one
/// partition, which is what lets ingest process a person's events in order.
pub fn kafka_key(token: &str, distinct_id: &str) -> String {
    let mut key = String::with_capacity(token.len() + 1 + distinct_id.len());
    key.push_str(token);
    key.push(':');
    key.push_str(distinct_id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn round_trips_and_omits_absent_optionals() {
        let ev = CapturedEvent {
            uuid: Uuid::nil(),
            distinct_id: "u1".into(),
            ip: "127.0.0.1".into(),
            data: r#"{"event":"e"}"#.into(),
            now: datetime!(2024-05-01 10:00:00.123 UTC),
            sent_at: None,
            token: "phc_x".into(),
            event: "e".into(),
            timestamp: None,
            historical_migration: false,
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert!(!text.contains("sent_at"), "{text}");
        assert!(!text.contains("historical_migration"), "{text}");
        assert!(text.contains(r#""now":"2024-05-01T10:00:00.123Z""#), "{text}");
        let back: CapturedEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn key_joins_token_and_distinct_id() {
        assert_eq!(kafka_key("phc_a", "user:1"), "phc_a:user:1");
    }
}
