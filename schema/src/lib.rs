//! The contract between `sluice-capture` and `sluice-ingest`.
//!
//! Everything that crosses Kafka is defined here once: topic names, the captured-event
//! message, its key and its headers. The message layout follows PostHog's capture
//! contract so either side can be swapped for PostHog's own.

pub mod clickhouse;
pub mod json;
pub mod message;
pub mod metrics;
pub mod postgres;
pub mod redis_keys;
pub mod topics;

/// Namespace of person uuids: UUIDv5(namespace, "{team_id}:{distinct_id}"), so a person's
/// uuid is known before the person exists, and personless events and a later person agree.
pub const PERSON_UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("1d5d0e9c-6c1f-4f77-9d3a-2b8f8b0c5e21");

pub fn person_uuid(team_id: i64, distinct_id: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&PERSON_UUID_NAMESPACE, format!("{team_id}:{distinct_id}").as_bytes())
}

pub use message::{kafka_key, CapturedEvent, HEADER_DISTINCT_ID, HEADER_EVENT, HEADER_NOW, HEADER_TOKEN, HEADER_UUID};
