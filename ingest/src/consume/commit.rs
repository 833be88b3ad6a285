//! Committing a written batch: only the partitions still owned, with a deadline of its
//! own, retried a few times and then left to the next commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::LaneConsumer;

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
pub(crate) async fn commit(consumer: &Arc<LaneConsumer>, batch: &[OwnedMessage]) -> Result<(), KafkaError> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    commit_offsets(consumer, next.into_iter().map(|((t, p), o)| (t, p, o))).await
}

/// Commits each `(topic, partition, next offset)` still assigned here, as [`commit`].
pub(crate) async fn commit_offsets<'a>(
    consumer: &Arc<LaneConsumer>,
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> Result<(), KafkaError> {
    let owned = consumer.context().owned();
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
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
pub(crate) fn commit_is_hopeless(e: &KafkaError) -> bool {
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
