//! Reading bounded batches from the lane's topic in offset order, and committing them
//! only once their writes are durable.
//!
//! The promise that ingest never commits past an event it has not written or
//! dead-lettered rests on one check, made here for every message: a partition's offsets
//! must follow on from where the partition is known to be done ([`Track`]). A partition
//! just assigned is checked against its committed offset; any jump forward means the
//! broker did not hand over some messages, and the partition is sought back until they
//! arrive. So a batch holds, per partition, an unbroken run of offsets starting at the
//! committed one, and committing its end covers only what the batch processed.
//!
//! Why the check is needed at all: Tansu 0.6's memory engine answers a fetch at an
//! offset inside a record batch with the *next* record batch (measured: a fetch at 5 of
//! a 0–9 batch returns from 10), so a consumer resuming at a committed offset in the
//! middle of a batch silently skipped its tail. Seeking back in the assignment callback
//! did not close that: librdkafka refuses a seek on a partition whose fetcher has not
//! started yet, asynchronously and without telling the caller, so whether the rewind
//! happened depended on a race with the consumer's own committed-offset fetch. A check
//! on what actually arrives holds whatever the broker, the race or the reason.
//!
//! The same broker leaves a fetch inside the *last* batch of a partition unanswered
//! until another batch comes, so there is nothing to check: a lane resuming in the middle
//! of a quiet partition's last batch would wait for new traffic before it sent that
//! batch's tail on (seen when the exports lane restarted). A partition that sends nothing
//! for `KAFKA_QUIET_PARTITION_CHECK_MS` of reading is therefore compared with its log's
//! end: past where it is done, it is sought back as for a gap; otherwise the first
//! offset of its last batch is read again, because Tansu reports as the log's end one
//! past that offset, not past the batch (for Kafka that re-reads one message, skipped).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::telemetry;

mod commit;
mod positions;

pub(crate) use commit::{commit, commit_is_hopeless, commit_offsets};
use positions::{Positions, Verdict};

pub(crate) type LaneConsumer = StreamConsumer<LaneContext>;

/// How long one broker call made while reading (committed offsets, watermarks, a seek)
/// may take before the message that needed it is put back.
pub(crate) const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) type Partition = (String, i32);

/// The consumer's context: keeps [`Positions`] through rebalances, and carries a request
/// to rejoin the group from the [`crate::watch`] task to the consume loop.
pub(crate) struct LaneContext {
    positions: Mutex<Positions>,
    /// How far before a missing offset the first search for it starts (see
    /// `KAFKA_GAP_REWIND_MESSAGES`).
    rewind: i64,
    /// Reading time after which a partition that sent nothing is checked for messages
    /// the broker holds back (see `KAFKA_QUIET_PARTITION_CHECK_MS`); zero: never.
    quiet_check: Duration,
    lane: &'static str,
    rejoin: AtomicBool,
}

impl LaneContext {
    pub(crate) fn new(rewind: i64, quiet_check: Duration, lane: &'static str) -> Self {
        LaneContext { positions: Mutex::default(), rewind, quiet_check, lane, rejoin: AtomicBool::new(false) }
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.positions.lock().expect("positions lock")
    }

    pub(crate) fn lane(&self) -> &'static str {
        self.lane
    }

    /// The partitions assigned here now.
    pub(crate) fn owned(&self) -> Vec<(String, i32)> {
        self.positions().owned.keys().cloned().collect()
    }

    /// Which assignment of `partition` this is (`None`: not assigned here).
    pub(crate) fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.positions().epoch(partition)
    }

    /// When the assignment here last changed; `None` before the first.
    pub(crate) fn assignment_changed(&self) -> Option<Instant> {
        self.positions().changed
    }

    /// Asks the consume loop to leave and rejoin the group before its next batch.
    pub(crate) fn request_rejoin(&self) {
        self.rejoin.store(true, Ordering::Relaxed);
    }
}

/// Leaves the group and joins it again, if [`LaneContext::request_rejoin`] asked for it:
/// the group then forms anew, and its leader assigns every partition from what the
/// members report. Called between batches, when everything read is committed.
pub(crate) fn rejoin_if_asked(consumer: &LaneConsumer, topic: &str) -> Result<(), KafkaError> {
    if !consumer.context().rejoin.swap(false, Ordering::Relaxed) {
        return Ok(());
    }
    info!(topic, "leaving and rejoining the consumer group");
    consumer.unsubscribe();
    consumer.subscribe(&[topic]).inspect_err(|_| consumer.context().request_rejoin())
}

impl ClientContext for LaneContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !sluice_connect::kafka::report_refusal(&error, reason) {
            warn!(error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for LaneContext {
    /// Only bookkeeping here: the callback runs inside librdkafka's poll, and anything
    /// slow (or a seek, which librdkafka refuses before the fetcher starts) belongs to
    /// the reader, where the first message of each partition is checked.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut positions = self.positions();
                for p in list.elements() {
                    positions.assign((p.topic().to_string(), p.partition()));
                }
                info!(partitions = ?partition_ids(list), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                let mut positions = self.positions();
                for p in list.elements() {
                    positions.revoke(&(p.topic().to_string(), p.partition()));
                }
                info!(partitions = ?partition_ids(list), "partitions revoked");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

fn partition_ids(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|p| p.partition()).collect()
}

pub(crate) struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_wait: std::time::Duration,
}

/// Waits up to `max_wait` for a first message, then takes what arrives until one of the
/// limits is reached. Per partition the batch is an unbroken run of offsets from where
/// the partition was done; messages of partitions revoked meanwhile are left out (their
/// new owner reads them). A consumer error ends the batch early but keeps what was read:
/// dropping read messages would leave a hole behind the consumer's position.
pub(crate) async fn next_batch(consumer: &LaneConsumer, limits: &BatchLimits) -> Vec<OwnedMessage> {
    let started = std::time::Instant::now();
    let context = consumer.context();
    let mut batch: Vec<OwnedMessage> = Vec::new();
    let mut epochs: HashMap<Partition, u64> = HashMap::new();
    let mut bytes = 0;
    let mut revocations = context.positions().revocations;
    let mut heard: HashSet<Partition> = HashSet::new();
    while batch.len() < limits.max_events && bytes < limits.max_bytes {
        let left = limits.max_wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                warn!(error = %e, "kafka consume error");
                telemetry::consume_error();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                break;
            }
            Ok(Ok(m)) => m.detach(),
        };
        let now = context.positions().revocations;
        if now != revocations {
            revocations = now;
            let positions = context.positions();
            batch.retain(|m| {
                let p = (m.topic().to_string(), m.partition());
                positions.epoch(&p).is_some_and(|e| epochs.get(&p) == Some(&e))
            });
            bytes = batch.iter().map(|m| m.payload().map_or(0, <[u8]>::len)).sum();
        }
        let p = (m.topic().to_string(), m.partition());
        if admit(consumer, &m) {
            if let Some(epoch) = context.positions().epoch(&p) {
                epochs.insert(p.clone(), epoch);
            }
            bytes += m.payload().map_or(0, <[u8]>::len);
            batch.push(m);
        }
        heard.insert(p);
    }
    let quiet = context.positions().quiet(started.elapsed(), &heard, context.quiet_check);
    for partition in quiet {
        tokio::task::block_in_place(|| unstick(consumer, &partition));
    }
    batch
}

/// A partition that sent nothing for a while: if its log holds messages past where it
/// is done, the broker is holding them back; seek back to have them sent.
fn unstick(consumer: &LaneConsumer, partition: &Partition) {
    let context = consumer.context();
    let Some(known) = context.positions().owned.get(partition).map(|t| t.next) else { return };
    let next = match known {
        Some(next) => next,
        None => match committed_offset(consumer, partition) {
            Ok(Some(done)) => done,
            // Nothing committed: read from the log start, which no batch straddles.
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, partition = partition.1, "could not read the committed offset of a quiet partition");
                return;
            }
        },
    };
    let (low, high) = match consumer.fetch_watermarks(&partition.0, partition.1, BROKER_CALL_TIMEOUT) {
        Ok(ends) => ends,
        Err(e) => {
            warn!(error = %e, partition = partition.1, "could not read the log ends of a quiet partition");
            return;
        }
    };
    let to = if high > next {
        // The broker says messages wait past `next`, and none came.
        let Some(to) = context.positions().unstick(partition, next, context.rewind) else {
            warn!(
                partition = partition.1,
                next,
                log_end = high,
                "messages wait in the log and none arrive, even from its start"
            );
            return;
        };
        warn!(
            partition = partition.1,
            next,
            log_end = high,
            to,
            "messages wait in the log past where this partition is done and none arrived; seeking back"
        );
        telemetry::offset_gap(context.lane, "quiet_sought_back");
        to.max(low)
    } else if low < high {
        // Tansu 0.6 reports as the log's end one past the *first* offset of the last
        // record batch, so it cannot tell whether that batch holds more than was done.
        // Its first offset is read again (for Kafka, one message that is skipped), which
        // sends the whole batch on.
        debug!(partition = partition.1, next, log_end = high, "quiet partition: reading its last batch again");
        context.positions().reread(partition, next, high - 1);
        high - 1
    } else {
        return;
    };
    if let Err(e) = consumer.seek(&partition.0, partition.1, Offset::Offset(to), BROKER_CALL_TIMEOUT) {
        warn!(error = %e, partition = partition.1, "seek failed; tried again when it stays quiet");
        context.positions().seek_failed(partition);
    }
}

/// Whether `m` goes into the batch; seeks back when messages before it are missing.
fn admit(consumer: &LaneConsumer, m: &OwnedMessage) -> bool {
    let context = consumer.context();
    let partition = (m.topic().to_string(), m.partition());
    let mut verdict = context.positions().check(&partition, m.offset(), context.rewind);
    if verdict == Verdict::Behind {
        verdict = match tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(m.topic(), m.partition(), BROKER_CALL_TIMEOUT)
        }) {
            Ok((_, high)) if log_ends_before_next(context, &partition, high) => {
                warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    log_end = high,
                    "the log ends before where this partition was done; going on from here"
                );
                telemetry::offset_gap(context.lane, "log_reset");
                context.positions().resume_at(&partition, m.offset());
                context.positions().check(&partition, m.offset(), context.rewind)
            }
            _ => Verdict::Done,
        };
    }
    if verdict == Verdict::Verify {
        match tokio::task::block_in_place(|| resume_offset(consumer, &partition, m.offset())) {
            Ok(next) => {
                context.positions().resume_at(&partition, next);
                verdict = context.positions().check(&partition, m.offset(), context.rewind);
            }
            Err(e) => {
                // Unchecked, the message must not be taken; read it again later.
                warn!(error = %e, partition = m.partition(), "could not read the committed offset; reading again");
                telemetry::dependency_retry("kafka");
                verdict = Verdict::SeekBack { to: m.offset() };
            }
        }
    }
    match verdict {
        Verdict::Take => true,
        Verdict::Done | Verdict::Behind => {
            telemetry::reread(context.lane);
            false
        }
        Verdict::NotOwned | Verdict::Verify => false,
        Verdict::AcceptGap { from } => {
            warn!(
                partition = m.partition(),
                from,
                to = m.offset(),
                "offsets missing from the log; going on after them"
            );
            telemetry::offset_gap(context.lane, "absent");
            true
        }
        Verdict::SeekBack { to } => {
            info!(
                partition = m.partition(),
                offset = m.offset(),
                to,
                "messages before this one were not delivered; seeking back"
            );
            telemetry::offset_gap(context.lane, "sought_back");
            let sought = tokio::task::block_in_place(|| {
                consumer.seek(m.topic(), m.partition(), Offset::Offset(to), BROKER_CALL_TIMEOUT)
            });
            if let Err(e) = sought {
                warn!(error = %e, partition = m.partition(), "seek failed; the next message tries again");
                context.positions().seek_failed(&partition);
            }
            false
        }
    }
}

fn log_ends_before_next(context: &LaneContext, partition: &Partition, high: i64) -> bool {
    context.positions().owned.get(partition).and_then(|t| t.next).is_some_and(|next| high < next)
}

/// Where a just-assigned partition resumes: its committed offset, the log start when
/// nothing was committed, or `first` when the log no longer reaches the committed offset
/// (it was emptied or cut; waiting for offsets that will never come would stop the lane).
fn resume_offset(consumer: &LaneConsumer, partition: &Partition, first: i64) -> Result<i64, KafkaError> {
    match committed_offset(consumer, partition)? {
        Some(done) => {
            if first < done {
                let (_, high) = consumer.fetch_watermarks(&partition.0, partition.1, BROKER_CALL_TIMEOUT)?;
                if high < done {
                    warn!(
                        partition = partition.1,
                        committed = done,
                        log_end = high,
                        "the log ends before the committed offset; resuming at its start"
                    );
                    telemetry::offset_gap(consumer.context().lane, "log_reset");
                    return Ok(first);
                }
            }
            Ok(done)
        }
        None => Ok(consumer.fetch_watermarks(&partition.0, partition.1, BROKER_CALL_TIMEOUT)?.0),
    }
}

/// The group's committed offset of `partition`, if it has one.
fn committed_offset(consumer: &LaneConsumer, partition: &Partition) -> Result<Option<i64>, KafkaError> {
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    let committed = consumer.committed_offsets(list, BROKER_CALL_TIMEOUT)?;
    Ok(match committed.elements().first().map(|p| p.offset()) {
        Some(Offset::Offset(done)) if done >= 0 => Some(done),
        _ => None,
    })
}
