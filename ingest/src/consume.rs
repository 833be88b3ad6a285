//! Reading bounded batches from the lane's topic, and committing them only once their
//! writes are durable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

pub type LaneConsumer = StreamConsumer<ResumeContext>;

/// Resumes assigned partitions a little before their committed offsets, skipping what
/// was already done.
///
/// Why: some Kafka-API brokers (Tansu 0.6's memory engine, measured here) answer a fetch
/// at an offset inside a record batch with the *next* batch, so a consumer resuming
/// mid-batch after a crash silently skips the batch's tail. Starting `rewind` messages
/// earlier lands on an earlier batch boundary; the messages before the committed offset
/// are dropped here, not processed twice. With a broker that fetches correctly (Apache
/// Kafka, Redpanda) `rewind` can stay 0.
pub struct ResumeContext {
    rewind: i64,
    skip_below: Mutex<HashMap<(String, i32), i64>>,
}

impl ResumeContext {
    pub fn new(rewind: i64) -> Self {
        ResumeContext { rewind, skip_below: Mutex::default() }
    }

    fn already_done(&self, m: &OwnedMessage) -> bool {
        let skip = self.skip_below.lock().expect("skip lock");
        skip.get(&(m.topic().to_string(), m.partition())).is_some_and(|&below| m.offset() < below)
    }
}

impl ClientContext for ResumeContext {
    /// librdkafka's statistics carry each assigned partition's lag behind its end.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    crate::telemetry::consumer_lag(topic, *id, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ResumeContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else { return };
        if self.rewind <= 0 || assigned.count() == 0 {
            return;
        }
        let committed = match consumer.committed_offsets((*assigned).clone(), Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not read committed offsets to rewind; resuming at them");
                return;
            }
        };
        let mut seek = TopicPartitionList::new();
        let mut skip = self.skip_below.lock().expect("skip lock");
        for p in committed.elements() {
            if let Offset::Offset(done) = p.offset() {
                if done > 0 {
                    skip.insert((p.topic().to_string(), p.partition()), done);
                    let _ = seek.add_partition_offset(
                        p.topic(),
                        p.partition(),
                        Offset::Offset((done - self.rewind).max(0)),
                    );
                }
            }
        }
        drop(skip);
        if seek.count() > 0 {
            tracing::info!(partitions = seek.count(), rewind = self.rewind, "resuming before the committed offsets");
            if let Err(e) = consumer.seek_partitions(seek, Duration::ZERO) {
                tracing::warn!(error = %e, "rewind seek failed; resuming at the committed offsets");
            }
        }
    }
}

pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// Waits up to `max_wait` for a first message, then takes what arrives until one of the
/// limits is reached.
pub async fn next_batch(
    consumer: &LaneConsumer,
    limits: &BatchLimits,
) -> Result<Vec<OwnedMessage>, rdkafka::error::KafkaError> {
    let started = Instant::now();
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < limits.max_events && bytes < limits.max_bytes {
        let left = limits.max_wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(m)) => {
                let m = m.detach();
                if consumer.context().already_done(&m) {
                    continue;
                }
                bytes += m.payload().map_or(0, <[u8]>::len);
                batch.push(m);
            }
        }
    }
    Ok(batch)
}

/// Commits the offset after the last message of each partition in `batch`.
pub fn commit(consumer: &LaneConsumer, batch: &[OwnedMessage]) -> Result<(), rdkafka::error::KafkaError> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    if next.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}
