//! Events plugins sent with `ctx.capture`, into the pipeline: produced to the ingestion
//! topic under their team's token, as capture would have, so they are processed like
//! any other event (persons, plugins, exports; the depth they carry bounds loops).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sluice_schema::CapturedEvent;
use time::OffsetDateTime;

use super::Plugins;

/// Where captured events go.
pub(crate) struct CaptureSink {
    pub producer: FutureProducer,
    pub topic: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    #[error("captured events cannot be sent: no Kafka producer in this process")]
    NoSink,
    #[error("team {0} not found for its plugin's captured events")]
    NoTeam(i64),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Plugins {
    /// Sends captured events on from now on.
    pub(crate) fn capture_to(&self, sink: CaptureSink) {
        let _ = self.capture_sink.set(sink);
    }

    /// Produces what plugin config `id` of `team` captured, and waits for the broker.
    pub(crate) async fn send_captured(&self, team: i64, id: i64, captured: Vec<Value>) -> Result<(), CaptureError> {
        if captured.is_empty() {
            return Ok(());
        }
        let sink = self.capture_sink.get().ok_or(CaptureError::NoSink)?;
        let token = self.token_of(team).await?;
        let now = OffsetDateTime::now_utc();
        let messages: Vec<(String, String)> = captured
            .into_iter()
            .map(|event| {
                let distinct_id = event["distinct_id"].as_str().unwrap_or_default().to_string();
                let message = CapturedEvent {
                    uuid: event["uuid"].as_str().and_then(|u| u.parse().ok()).unwrap_or_else(uuid::Uuid::now_v7),
                    distinct_id: distinct_id.clone(),
                    ip: String::new(),
                    now,
                    sent_at: None,
                    token: token.clone(),
                    event: event["event"].as_str().unwrap_or_default().to_string(),
                    timestamp: event["timestamp"].as_str().map(str::to_string),
                    historical_migration: false,
                    data: event.to_string(),
                };
                let key = sluice_schema::message::kafka_key(&token, &distinct_id);
                (key, serde_json::to_string(&message).expect("messages serialize"))
            })
            .collect();
        let sends = messages.iter().map(|(key, payload)| {
            let record = FutureRecord::to(&sink.topic).key(key).payload(payload);
            async move { sink.producer.send(record, Duration::from_secs(30)).await.map(drop).map_err(|(e, _)| e) }
        });
        futures::future::try_join_all(sends).await?;
        crate::telemetry::plugin_captured(id, messages.len());
        Ok(())
    }

    async fn token_of(&self, team: i64) -> Result<String, CaptureError> {
        if let Some(token) = self.tokens.lock().expect("tokens lock").get(&team) {
            return Ok(token.clone());
        }
        let row: Option<(String,)> =
            sqlx::query_as("SELECT api_token FROM teams WHERE id = $1").bind(team).fetch_optional(&self.pool).await?;
        let (token,) = row.ok_or(CaptureError::NoTeam(team))?;
        self.tokens.lock().expect("tokens lock").insert(team, token.clone());
        Ok(token)
    }
}
