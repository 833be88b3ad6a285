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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::telemetry;

pub type LaneConsumer = StreamConsumer<LaneContext>;

/// How long one broker call made while reading (committed offsets, watermarks, a seek)
/// may take before the message that needed it is put back.
pub(crate) const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) type Partition = (String, i32);

/// Where one owned partition stands.
#[derive(Clone, Debug, PartialEq)]
struct Track {
    /// The offset the next message must have; `None` until the first message after the
    /// assignment was checked against the committed offset.
    next: Option<i64>,
    /// Set after seeking back to this offset to find `next`: offsets below `next` are
    /// then skipped as done, and a second jump over `next` widens the search.
    sought: Option<i64>,
    /// Which assignment this is, so messages read under an earlier one are told apart.
    epoch: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The next offset of an owned partition: it belongs in the batch.
    Take,
    /// Below where the partition is done (read again after seeking back): dropped
    /// without a trace, it was processed before.
    Done,
    /// Below where the partition is done without a seek of ours: the consumer was reset
    /// (its position fell off the log). Done, unless the log itself now ends before
    /// `next` (a broker that lost or emptied the log), when it is taken.
    Behind,
    /// The partition is not assigned here (any more).
    NotOwned,
    /// First message since the assignment: compare with the committed offset first.
    Verify,
    /// Messages before this one were not delivered: seek to `to`, drop this one.
    SeekBack { to: i64 },
    /// The offsets between `next` and this message do not exist in the log (looked for
    /// from the log start, or retention removed them): take this one and go on.
    AcceptGap { from: i64 },
}

/// Every owned partition's [`Track`], kept by the rebalance callbacks and the reader.
#[derive(Default)]
struct Positions {
    owned: HashMap<Partition, Track>,
    epochs: u64,
    revocations: u64,
    /// When the assignment here last changed.
    changed: Option<Instant>,
}

impl Positions {
    fn assign(&mut self, partition: Partition) {
        self.epochs += 1;
        self.owned.insert(partition, Track { next: None, sought: None, epoch: self.epochs });
        self.changed = Some(Instant::now());
    }

    fn revoke(&mut self, partition: &Partition) {
        self.owned.remove(partition);
        self.revocations += 1;
        self.changed = Some(Instant::now());
    }

    fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.owned.get(partition).map(|t| t.epoch)
    }

    /// Judges `offset` and moves the partition's track as the verdict implies.
    fn check(&mut self, partition: &Partition, offset: i64, rewind: i64) -> Verdict {
        let Some(track) = self.owned.get_mut(partition) else { return Verdict::NotOwned };
        let Some(next) = track.next else { return Verdict::Verify };
        if offset < next {
            return if track.sought.is_some() { Verdict::Done } else { Verdict::Behind };
        }
        if offset == next {
            track.next = Some(next + 1);
            track.sought = None;
            return Verdict::Take;
        }
        let to = match track.sought {
            // Sought back before and still jumped over `next`: look further back, twice
            // as far each time. Nothing further back to look at means the gap is real.
            Some(from) if from <= 0 || from >= next => None,
            Some(from) => Some((next - 2 * (next - from)).max(0)),
            None => Some((next - rewind.max(0)).max(0)),
        };
        match to {
            Some(to) => {
                track.sought = Some(to);
                Verdict::SeekBack { to }
            }
            None => {
                track.next = Some(offset + 1);
                track.sought = None;
                Verdict::AcceptGap { from: next }
            }
        }
    }

    /// Sets where a just-assigned partition resumes, from its committed offset.
    fn resume_at(&mut self, partition: &Partition, next: i64) {
        if let Some(track) = self.owned.get_mut(partition) {
            track.next = Some(next);
            track.sought = None;
        }
    }

    /// A seek that failed: the next message of the partition tries again.
    fn seek_failed(&mut self, partition: &Partition) {
        if let Some(track) = self.owned.get_mut(partition) {
            track.sought = None;
        }
    }
}

/// The consumer's context: keeps [`Positions`] through rebalances, and carries a request
/// to rejoin the group from the [`crate::watch`] task to the consume loop.
pub struct LaneContext {
    positions: Mutex<Positions>,
    /// How far before a missing offset the first search for it starts (see
    /// `KAFKA_GAP_REWIND_MESSAGES`).
    rewind: i64,
    lane: &'static str,
    rejoin: AtomicBool,
}

impl LaneContext {
    pub fn new(rewind: i64, lane: &'static str) -> Self {
        LaneContext { positions: Mutex::default(), rewind, lane, rejoin: AtomicBool::new(false) }
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.positions.lock().expect("positions lock")
    }

    pub fn lane(&self) -> &'static str {
        self.lane
    }

    /// The partitions assigned here now.
    pub fn owned(&self) -> Vec<(String, i32)> {
        self.positions().owned.keys().cloned().collect()
    }

    /// When the assignment here last changed; `None` before the first.
    pub fn assignment_changed(&self) -> Option<Instant> {
        self.positions().changed
    }

    /// Asks the consume loop to leave and rejoin the group before its next batch.
    pub fn request_rejoin(&self) {
        self.rejoin.store(true, Ordering::Relaxed);
    }
}

/// Leaves the group and joins it again, if [`LaneContext::request_rejoin`] asked for it:
/// the group then forms anew, and its leader assigns every partition from what the
/// members report. Called between batches, when everything read is committed.
pub fn rejoin_if_asked(consumer: &LaneConsumer, topic: &str) -> Result<(), KafkaError> {
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

pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_wait: std::time::Duration,
}

/// Waits up to `max_wait` for a first message, then takes what arrives until one of the
/// limits is reached. Per partition the batch is an unbroken run of offsets from where
/// the partition was done; messages of partitions revoked meanwhile are left out (their
/// new owner reads them). A consumer error ends the batch early but keeps what was read:
/// dropping read messages would leave a hole behind the consumer's position.
pub async fn next_batch(consumer: &LaneConsumer, limits: &BatchLimits) -> Vec<OwnedMessage> {
    let started = std::time::Instant::now();
    let context = consumer.context();
    let mut batch: Vec<OwnedMessage> = Vec::new();
    let mut epochs: HashMap<Partition, u64> = HashMap::new();
    let mut bytes = 0;
    let mut revocations = context.positions().revocations;
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
        if admit(consumer, &m) {
            let p = (m.topic().to_string(), m.partition());
            if let Some(epoch) = context.positions().epoch(&p) {
                epochs.insert(p, epoch);
            }
            bytes += m.payload().map_or(0, <[u8]>::len);
            batch.push(m);
        }
    }
    batch
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
    let mut list = TopicPartitionList::new();
    list.add_partition(&partition.0, partition.1);
    let committed = consumer.committed_offsets(list, BROKER_CALL_TIMEOUT)?;
    let committed = committed.elements().first().map(|p| p.offset());
    match committed {
        Some(Offset::Offset(done)) if done >= 0 => {
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
        _ => Ok(consumer.fetch_watermarks(&partition.0, partition.1, BROKER_CALL_TIMEOUT)?.0),
    }
}

/// How long a commit may wait for the broker before it is given up (and left to the next).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Commits the offset after the last message of each partition in `batch` that is still
/// assigned here, and waits for the broker's answer, at most [`COMMIT_TIMEOUT`].
///
/// librdkafka's synchronous commit has no deadline of its own: with the group
/// coordinator gone it blocked the lane's thread for good, SIGTERM included (seen in the
/// chaos run). So it runs on a thread of its own, and one that does not answer in time is
/// left behind. A commit given up is covered by the next commit of the same partitions;
/// until then a new owner merely processes some events again.
pub async fn commit(consumer: &std::sync::Arc<LaneConsumer>, batch: &[OwnedMessage]) -> Result<(), KafkaError> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let owned = consumer.context().owned();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if owned.iter().any(|(t, p)| t == topic && *p == partition) {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    let (answer, answered) = tokio::sync::oneshot::channel();
    let committing = consumer.clone();
    std::thread::spawn(move || {
        let _ = answer.send(committing.commit(&tpl, CommitMode::Sync));
    });
    match tokio::time::timeout(COMMIT_TIMEOUT, answered).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::Fail)),
        Err(_) => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::OperationTimedOut)),
    }
}

/// Commit errors that retrying cannot fix: this member no longer owns what it commits.
pub fn commit_is_hopeless(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::State
                | RDKafkaErrorCode::AssignmentLost
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    fn owned_at(next: i64) -> Positions {
        let mut positions = Positions::default();
        positions.assign(p(0));
        positions.resume_at(&p(0), next);
        positions
    }

    #[test]
    fn in_order_offsets_are_taken_and_earlier_ones_are_done() {
        let mut positions = owned_at(10);
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 11, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 5, 100), Verdict::Behind, "not after a seek of ours: checked");
        assert_eq!(positions.check(&p(0), 12, 100), Verdict::Take);
    }

    #[test]
    fn a_just_assigned_partition_is_verified_first_and_unknown_ones_are_not_owned() {
        let mut positions = Positions::default();
        positions.assign(p(0));
        assert_eq!(positions.check(&p(0), 3, 100), Verdict::Verify);
        assert_eq!(positions.check(&p(1), 3, 100), Verdict::NotOwned);
    }

    /// The skipped batch tail: resumed at 12309, the broker hands 12315 first.
    #[test]
    fn a_jump_seeks_back_and_what_is_read_again_is_skipped_until_the_missing_offset() {
        let mut positions = owned_at(12309);
        assert_eq!(positions.check(&p(0), 12315, 100), Verdict::SeekBack { to: 12209 });
        for o in 12250..12309 {
            assert_eq!(positions.check(&p(0), o, 100), Verdict::Done);
        }
        assert_eq!(positions.check(&p(0), 12309, 100), Verdict::Take);
        assert_eq!(positions.check(&p(0), 12310, 100), Verdict::Take);
    }

    #[test]
    fn a_seek_that_lands_too_late_again_looks_twice_as_far_back_down_to_the_log_start() {
        let mut positions = owned_at(1000);
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 900 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 800 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 600 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 200 });
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::SeekBack { to: 0 });
        // Read from the log start and still no 1000: those offsets do not exist.
        assert_eq!(positions.check(&p(0), 1100, 100), Verdict::AcceptGap { from: 1000 });
        assert_eq!(positions.check(&p(0), 1101, 100), Verdict::Take);
    }

    /// With no rewind (a broker that fetches correctly) a gap is looked for once, at the
    /// missing offset itself; if it is still absent it does not exist.
    #[test]
    fn without_rewind_a_gap_is_looked_for_once() {
        let mut positions = owned_at(50);
        assert_eq!(positions.check(&p(0), 52, 0), Verdict::SeekBack { to: 50 });
        assert_eq!(positions.check(&p(0), 52, 0), Verdict::AcceptGap { from: 50 });
        assert_eq!(positions.check(&p(0), 53, 0), Verdict::Take);
    }

    #[test]
    fn a_failed_seek_is_tried_again_by_the_next_message() {
        let mut positions = owned_at(10);
        assert_eq!(positions.check(&p(0), 20, 5), Verdict::SeekBack { to: 5 });
        positions.seek_failed(&p(0));
        assert_eq!(positions.check(&p(0), 21, 5), Verdict::SeekBack { to: 5 });
    }

    #[test]
    fn revocation_forgets_the_partition_and_a_new_assignment_starts_unverified() {
        let mut positions = owned_at(10);
        let first = positions.epoch(&p(0));
        positions.revoke(&p(0));
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::NotOwned);
        positions.assign(p(0));
        assert_ne!(positions.epoch(&p(0)), first);
        assert_eq!(positions.check(&p(0), 10, 100), Verdict::Verify);
    }
}
