//! Stage 5: messages to Kafka, and the answer only once Kafka has acknowledged them all.

use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use sluice_schema::{CapturedEvent, HEADER_DISTINCT_ID, HEADER_EVENT, HEADER_NOW, HEADER_TOKEN, HEADER_UUID};
use uuid::Uuid;

use crate::health::Health;
use crate::route::{Lane, Topics};
use crate::telemetry;

/// Bytes Kafka adds to a record beyond key, value and headers, rounded up.
const RECORD_OVERHEAD: usize = 128;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProduceError {
    #[error("event {uuid} is {size} bytes once encoded, over the {limit} byte message limit")]
    TooLarge { uuid: Uuid, size: usize, limit: usize },
    #[error("the producer queue is full, retry later")]
    QueueFull,
    #[error("kafka is unreachable, retry later")]
    BrokerDown,
    #[error("kafka did not acknowledge an event: {0}")]
    Delivery(String),
}

/// One message ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    pub lane: Lane,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub uuid: Uuid,
}

impl OutMessage {
    pub fn new(lane: Lane, key: Option<String>, event: &CapturedEvent, now_text: &str) -> Self {
        OutMessage {
            lane,
            key,
            payload: serde_json::to_vec(event).expect("a CapturedEvent always serializes"),
            headers: vec![
                (HEADER_TOKEN, event.token.clone()),
                (HEADER_DISTINCT_ID, event.distinct_id.clone()),
                (HEADER_EVENT, event.event.clone()),
                (HEADER_UUID, event.uuid.to_string()),
                (HEADER_NOW, now_text.to_string()),
            ],
            uuid: event.uuid,
        }
    }

    pub fn encoded_size(&self) -> usize {
        RECORD_OVERHEAD
            + self.payload.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// Checks every message against the limit before anything is produced, so a request
/// is never half written.
pub fn check_sizes(messages: &[OutMessage], limit: usize) -> Result<(), ProduceError> {
    for m in messages {
        let size = m.encoded_size();
        if size > limit {
            return Err(ProduceError::TooLarge { uuid: m.uuid, size, limit });
        }
    }
    Ok(())
}

/// Where accepted messages go. Kafka in production; a vector in unit tests.
pub trait Sink: Send + Sync + 'static {
    /// Resolves once every message is acknowledged, or with the first failure.
    fn send_all(&self, messages: Vec<OutMessage>) -> BoxFuture<'_, Result<(), ProduceError>>;
    fn flush(&self, timeout: Duration);
}

pub struct KafkaSettings {
    pub hosts: String,
    pub topics: Topics,
    pub compression: String,
    pub linger_ms: u64,
    pub queue_max_messages: u64,
    pub queue_max_kbytes: u64,
    pub message_timeout_ms: u64,
    pub message_max_bytes: usize,
}

/// Feeds the producer's statistics into health and metrics; librdkafka calls it from its
/// own thread, which makes it the producer's heartbeat too.
pub struct ProducerContext {
    health: Health,
}

impl ClientContext for ProducerContext {
    fn stats(&self, stats: Statistics) {
        self.health.tick_producer();
        // Bootstrap entries have node id -1; only real brokers count.
        let up = stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.health.set_broker_up(up);
        telemetry::producer_stats(stats.msg_cnt, stats.msg_size, up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set_broker_up(false);
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

pub struct KafkaSink {
    producer: FutureProducer<ProducerContext>,
    topics: Topics,
    health: Health,
    message_max_bytes: usize,
}

impl KafkaSink {
    pub fn new(settings: KafkaSettings, health: Health) -> Result<Self, KafkaError> {
        let producer: FutureProducer<ProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.hosts)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.codec", &settings.compression)
            .set("linger.ms", settings.linger_ms.to_string())
            .set("queue.buffering.max.messages", settings.queue_max_messages.to_string())
            .set("queue.buffering.max.kbytes", settings.queue_max_kbytes.to_string())
            .set("message.timeout.ms", settings.message_timeout_ms.to_string())
            .set("message.max.bytes", settings.message_max_bytes.max(1000).to_string())
            .set("statistics.interval.ms", "1000")
            .set("partitioner", "murmur2_random")
            .create_with_context(ProducerContext { health: health.clone() })?;
        Ok(KafkaSink { producer, topics: settings.topics, health, message_max_bytes: settings.message_max_bytes })
    }

    /// Waits up to `timeout` for the cluster to answer, so readiness starts out true.
    pub fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        let result = self.producer.client().fetch_metadata(None, timeout).map(|_| ());
        self.health.set_broker_up(result.is_ok());
        self.health.tick_producer();
        result
    }
}

fn map_enqueue_error(e: KafkaError) -> ProduceError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::Delivery("message too large for the broker".into()),
        _ => ProduceError::Delivery(e.to_string()),
    }
}

impl Sink for KafkaSink {
    fn send_all(&self, messages: Vec<OutMessage>) -> BoxFuture<'_, Result<(), ProduceError>> {
        Box::pin(async move {
            check_sizes(&messages, self.message_max_bytes)?;
            // Known down: answer now instead of holding the request (and its memory)
            // until the message timeout.
            if !self.health.broker_up() {
                return Err(ProduceError::BrokerDown);
            }
            let mut acks = Vec::with_capacity(messages.len());
            for m in &messages {
                let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
                for (k, v) in &m.headers {
                    headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                let mut record = FutureRecord::to(self.topics.name(m.lane)).payload(&m.payload).headers(headers);
                if let Some(key) = &m.key {
                    record = record.key(key.as_str());
                }
                match self.producer.send_result(record) {
                    Ok(ack) => acks.push(ack),
                    Err((e, _)) => return Err(map_enqueue_error(e)),
                }
            }
            for ack in join_all(acks).await {
                match ack {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(ProduceError::Delivery(e.to_string())),
                    Err(_canceled) => return Err(ProduceError::Delivery("producer shut down".into())),
                }
            }
            Ok(())
        })
    }

    fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::error!(error = %e, "producer flush did not finish; unacknowledged messages were not answered 200");
        }
    }
}

/// Keeps messages in memory; for tests of the HTTP layer without a broker.
#[derive(Default)]
pub struct MemorySink {
    pub messages: std::sync::Mutex<Vec<OutMessage>>,
    pub fail_with: std::sync::Mutex<Option<ProduceError>>,
    pub message_max_bytes: usize,
}

impl Sink for MemorySink {
    fn send_all(&self, messages: Vec<OutMessage>) -> BoxFuture<'_, Result<(), ProduceError>> {
        Box::pin(async move {
            check_sizes(&messages, self.message_max_bytes)?;
            if let Some(e) = self.fail_with.lock().expect("lock").clone() {
                return Err(e);
            }
            self.messages.lock().expect("lock").extend(messages);
            Ok(())
        })
    }

    fn flush(&self, _timeout: Duration) {}
}
