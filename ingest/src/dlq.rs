//! Dead letters: what one event could not get through, kept whole with the reason.

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub stage: &'static str,
    pub error: String,
    pub error_class: &'static str,
    pub team_id: Option<i64>,
}

pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    lane: &'static str,
}

impl DeadLetters {
    pub(crate) fn new(producer: FutureProducer, topic: String, lane: &'static str) -> Self {
        DeadLetters { producer, topic, lane }
    }

    /// Publishes the original message (key, value, headers) with the reason in `dlq_*`
    /// headers, so a replay can re-publish it unchanged.
    pub(crate) async fn send(
        &self,
        original: &OwnedMessage,
        dead: &DeadLetter,
        attempts: u32,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let team = dead.team_id.map(|t| t.to_string()).unwrap_or_default();
        let attempts = attempts.to_string();
        let reason = [
            ("dlq_stage", dead.stage),
            ("dlq_error", dead.error.as_str()),
            ("dlq_error_class", dead.error_class),
            ("dlq_team_id", team.as_str()),
            ("dlq_attempts", attempts.as_str()),
        ];
        let payload = original.payload().unwrap_or_default();
        self.publish(payload, original.key(), original.headers(), original.topic(), &reason).await
    }

    /// Publishes `payload` with its key and headers, the reason's headers, and where and
    /// when it failed.
    pub(crate) async fn publish(
        &self,
        payload: &[u8],
        key: Option<&[u8]>,
        original: Option<&OwnedHeaders>,
        source_topic: &str,
        reason: &[(&str, &str)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = original {
            for h in h.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let failed_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("UTC times format");
        let place =
            [("dlq_failed_at", failed_at.as_str()), ("dlq_lane", self.lane), ("dlq_source_topic", source_topic)];
        for (k, v) in reason.iter().chain(&place) {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut record = FutureRecord::to(&self.topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}

/// A message's header as text (dead letters' `dlq_*`, the exports topic's own).
pub(crate) fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?.iter().find(|h| h.key == key).and_then(|h| std::str::from_utf8(h.value?).ok())
}
