//! The contract between `sluice-capture` and `sluice-ingest`.
//!
//! Everything that crosses Kafka is defined here once: topic names, the captured-event
//! message, its key and its headers. The message layout follows PostHog's capture
//! contract so either side can be swapped for PostHog's own.

pub mod message;
pub mod topics;

pub use message::{kafka_key, CapturedEvent, HEADER_DISTINCT_ID, HEADER_EVENT, HEADER_NOW, HEADER_TOKEN, HEADER_UUID};
