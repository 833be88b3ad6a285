//! Stage 5: messages to Kafka, and the answer only once Kafka has acknowledged them all.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use sluice_connect::kafka::{KafkaSecurity, Role};
use sluice_schema::{CapturedEvent, HEADER_DISTINCT_ID, HEADER_EVENT, HEADER_NOW, HEADER_TOKEN, HEADER_UUID};
use uuid::Uuid;

use crate::health::Health;
use crate::route::{Topic, Topics};
use crate::telemetry;

/// Bytes Kafka adds to a record beyond key, value and headers, rounded up.
const RECORD_OVERHEAD: usize = 128;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProduceError {
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
pub(crate) struct OutMessage {
    pub lane: Topic,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub uuid: Uuid,
}

impl OutMessage {
    pub(crate) fn new(lane: Topic, key: Option<String>, event: &CapturedEvent, now_text: &str) -> Self {
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

    pub(crate) fn encoded_size(&self) -> usize {
        RECORD_OVERHEAD
            + self.payload.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// Checks every message against the limit before anything is produced, so a request
/// is never half written.
pub(crate) fn check_sizes(messages: &[OutMessage], limit: usize) -> Result<(), ProduceError> {
    for m in messages {
        let size = m.encoded_size();
        if size > limit {
            return Err(ProduceError::TooLarge { uuid: m.uuid, size, limit });
        }
    }
    Ok(())
}

/// Where accepted messages go. Kafka in production; a vector in unit tests.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Resolves once every message is acknowledged, or with the first failure.
    fn send_all(&self, messages: Vec<OutMessage>) -> BoxFuture<'_, Result<(), ProduceError>>;
    fn flush(&self, timeout: Duration);
}

pub(crate) struct KafkaSettings {
    pub hosts: String,
    pub topics: Topics,
    pub compression: String,
    pub linger_ms: u64,
    pub queue_max_messages: u64,
    pub queue_max_kbytes: u64,
    pub message_timeout_ms: u64,
    pub message_max_bytes: usize,
    pub debug: String,
    pub security: KafkaSecurity,
}

/// Feeds the producer's statistics into health and metrics; librdkafka calls it from its
/// own thread, which makes it the producer's heartbeat too.
pub(crate) struct ProducerContext {
    health: Health,
    fatal: Arc<AtomicBool>,
}

impl ClientContext for ProducerContext {
    fn stats(&self, stats: Statistics) {
        self.health.tick_producer();
        telemetry::producer_stats(stats.msg_cnt, stats.msg_size);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            tracing::error!(error = %error, reason, "fatal kafka producer error; the producer will be recreated");
            self.fatal.store(true, Ordering::Relaxed);
            return;
        }
        if sluice_connect::kafka::report_refusal(&error, reason) {
            return;
        }
        // Brokers close idle connections and librdkafka reports that as "all brokers
        // down" although it reconnects on the next message; the probe decides instead.
        tracing::debug!(error = %error, reason, "kafka client error");
    }
}

type KafkaProducer = FutureProducer<ProducerContext>;

/// Requests in a row that failed to be acknowledged, while the broker answers, before
/// the producer is recreated.
const RESET_AFTER_FAILED_REQUESTS: u32 = 3;
/// How much longer than `message.timeout.ms` a request waits for its acknowledgements.
const ACK_TIMEOUT_MARGIN_MS: u64 = 500;

pub(crate) struct KafkaSink {
    config: ClientConfig,
    producer: RwLock<Arc<KafkaProducer>>,
    topics: Topics,
    health: Health,
    message_max_bytes: usize,
    failed_requests: AtomicU32,
    fatal: Arc<AtomicBool>,
    ack_timeout: Duration,
}

impl KafkaSink {
    pub(crate) fn new(settings: KafkaSettings, health: Health) -> Result<Self, KafkaError> {
        let mut config = settings
            .security
            .client_config(&settings.hosts, Role::Producer)
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        if !settings.debug.is_empty() {
            config.set("debug", &settings.debug);
        }
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.codec", &settings.compression)
            .set("linger.ms", settings.linger_ms.to_string())
            .set("queue.buffering.max.messages", settings.queue_max_messages.to_string())
            .set("queue.buffering.max.kbytes", settings.queue_max_kbytes.to_string())
            .set("message.timeout.ms", settings.message_timeout_ms.to_string())
            .set("message.max.bytes", settings.message_max_bytes.max(1000).to_string())
            .set("statistics.interval.ms", "1000")
            .set("partitioner", "murmur2_random");
        let fatal = Arc::new(AtomicBool::new(false));
        telemetry::producer_stats(0, 0);
        let producer = config.create_with_context(ProducerContext { health: health.clone(), fatal: fatal.clone() })?;
        Ok(KafkaSink {
            config,
            producer: RwLock::new(Arc::new(producer)),
            topics: settings.topics,
            health,
            message_max_bytes: settings.message_max_bytes,
            failed_requests: AtomicU32::new(0),
            fatal,
            ack_timeout: Duration::from_millis(settings.message_timeout_ms + ACK_TIMEOUT_MARGIN_MS),
        })
    }

    fn producer(&self) -> Arc<KafkaProducer> {
        self.producer.read().expect("producer lock poisoned").clone()
    }

    /// Asks the cluster for the main topic's metadata and records whether it answered.
    /// Run at start and then periodically: it is what readiness and the early 503 rely
    /// on, and the request itself makes librdkafka reconnect after an outage.
    ///
    /// An idempotent producer whose broker lost its state (a restarted single broker, an
    /// expired producer id) can stay stuck on "unknown producer id" forever, bumping its
    /// epoch locally; when the broker answers but deliveries keep failing, or librdkafka
    /// reported a fatal error, the producer is replaced by a fresh one.
    pub(crate) fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        let result = self.producer().client().fetch_metadata(Some(&self.topics.main), timeout).map(|_| ());
        let up = result.is_ok();
        if up != self.health.broker_up() {
            if up {
                tracing::info!("kafka reachable again");
            } else {
                tracing::warn!(error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "kafka unreachable");
            }
        }
        self.health.set_broker_up(up);
        telemetry::broker_up(up);
        let stuck = self.failed_requests.load(Ordering::Relaxed) >= RESET_AFTER_FAILED_REQUESTS;
        if up && (stuck || self.fatal.load(Ordering::Relaxed)) {
            self.recreate_producer()?;
        }
        result
    }

    fn recreate_producer(&self) -> Result<(), KafkaError> {
        let producer = self
            .config
            .create_with_context(ProducerContext { health: self.health.clone(), fatal: self.fatal.clone() })?;
        *self.producer.write().expect("producer lock poisoned") = Arc::new(producer);
        self.fatal.store(false, Ordering::Relaxed);
        self.failed_requests.store(0, Ordering::Relaxed);
        telemetry::producer_recreated();
        tracing::warn!("recreated the kafka producer after repeated delivery failures");
        Ok(())
    }

    async fn deliver(&self, messages: &[OutMessage]) -> Result<(), ProduceError> {
        let producer = self.producer();
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let mut record = FutureRecord::to(self.topics.name(m.lane)).payload(&m.payload).headers(headers);
            if let Some(key) = &m.key {
                record = record.key(key.as_str());
            }
            match producer.send_result(record) {
                Ok(ack) => acks.push(ack),
                Err((e, _)) => return Err(map_enqueue_error(e)),
            }
        }
        // librdkafka may hold an in-flight message past `message.timeout.ms` (idempotent
        // retries, reconnect back-off); the client is owed an answer in bounded time.
        let acks = tokio::time::timeout(self.ack_timeout, join_all(acks))
            .await
            .map_err(|_| ProduceError::Delivery("kafka did not acknowledge in time".into()))?;
        for ack in acks {
            match ack {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(ProduceError::Delivery(e.to_string())),
                Err(_canceled) => return Err(ProduceError::Delivery("producer shut down".into())),
            }
        }
        Ok(())
    }
}

fn map_enqueue_error(e: KafkaError) -> ProduceError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            ProduceError::Delivery("message too large for the broker".into())
        }
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
            let result = self.deliver(&messages).await;
            match &result {
                Ok(()) => self.failed_requests.store(0, Ordering::Relaxed),
                Err(ProduceError::Delivery(_)) => {
                    self.failed_requests.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {}
            }
            result
        })
    }

    fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer().flush(timeout) {
            tracing::error!(error = %e, "producer flush did not finish; unacknowledged messages were not answered 200");
        }
    }
}

/// Keeps messages in memory; for tests of the pipeline without a broker.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemorySink {
    pub messages: std::sync::Mutex<Vec<OutMessage>>,
    pub fail_with: std::sync::Mutex<Option<ProduceError>>,
    pub message_max_bytes: usize,
}

#[cfg(test)]
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
