//! Reading bounded batches from the lane's topic, and committing them only once their
//! writes are durable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// Waits up to `max_wait` for a first message, then takes what arrives until one of the
/// limits is reached.
pub async fn next_batch(
    consumer: &StreamConsumer,
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
                bytes += m.payload_len();
                batch.push(m.detach());
            }
        }
    }
    Ok(batch)
}

/// Commits the offset after the last message of each partition in `batch`.
pub fn commit(consumer: &StreamConsumer, batch: &[OwnedMessage]) -> Result<(), rdkafka::error::KafkaError> {
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
