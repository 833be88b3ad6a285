//! What the lane sees of its whole topic, from a task beside the consume loop: each owned
//! partition's lag, and partitions that no one is consuming.
//!
//! Lag is read from the broker here rather than taken from librdkafka's statistics,
//! which are delivered only while the lane polls: a lane retrying a batch through an
//! outage does not poll, which is exactly when its lag matters.
//!
//! The second job exists because a group's assignment can be wrong without any member
//! being told. In a chaos run, after a burst of session timeouts, Tansu 0.6's coordinator
//! left three members holding assignments from different generations: two partitions
//! consumed twice and three by no one, for eight minutes, every heartbeat answered as if
//! the group were stable. A member cannot see the others' assignments (Tansu does not
//! describe them), but every member can read the group's committed offsets: a partition
//! with messages past its committed offset and no commit for `stall_after`, while this
//! process was ready and its own assignment unchanged all that time, is consumed by no
//! one healthy. The process then leaves and rejoins the group, which makes the group form
//! again and its leader assign every partition from what the members report.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::consume::{LaneConsumer, BROKER_CALL_TIMEOUT};
use crate::health::Health;
use crate::telemetry;

pub(crate) struct Settings {
    pub topic: String,
    /// How often the topic is read.
    pub interval: Duration,
    /// How long a partition may have messages and no commit before this process rejoins
    /// the group; `None` turns the check off.
    pub stall_after: Option<Duration>,
    /// Whether partitions this process owns are judged too. Not in the exports lane: a
    /// partition there rightly waits uncommitted while a plugin's retries run.
    pub judge_owned: bool,
}

/// One partition of the topic as the broker and this member see it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PartitionView {
    partition: i32,
    /// The log's end.
    end: i64,
    /// Where the group is done: its committed offset, or the log start if none.
    done: i64,
    /// This member's read position, for a partition it owns and has read from.
    position: Option<i64>,
    owned: bool,
}

/// Starts the watch. It holds the consumer weakly, so it never delays its close.
pub(crate) fn spawn(
    consumer: &Arc<LaneConsumer>,
    health: Arc<Health>,
    settings: Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let consumer = Arc::downgrade(consumer);
    tokio::spawn(async move {
        let mut reported: HashMap<i32, i64> = HashMap::new();
        let mut stalls = Stalls::default();
        let mut every = sluice_common::every::Every::now(settings.interval, stop);
        while every.tick().await {
            let Some(strong) = consumer.upgrade() else { return };
            let context_consumer = strong.clone();
            let topic = settings.topic.clone();
            let Ok(Ok(view)) = tokio::task::spawn_blocking(move || read(&strong, &topic)).await else { continue };
            let context = context_consumer.context();
            report_lag(context.lane(), &settings.topic, &view, &mut reported);
            let Some(after) = settings.stall_after else { continue };
            let judged: Vec<PartitionView> =
                view.iter().filter(|p| settings.judge_owned || !p.owned).copied().collect();
            let stalled = stalls.observe(Instant::now(), health.ready(), context.assignment_changed(), &judged, after);
            if !stalled.is_empty() {
                warn!(
                    lane = context.lane(),
                    partitions = ?stalled,
                    stalled_for_ms = after.as_millis() as u64,
                    "partitions have messages and no commit while this process is ready: \
                     no one is consuming them; rejoining the group to have them assigned"
                );
                telemetry::group_rejoin(context.lane());
                context.request_rejoin();
            }
        }
    })
}

/// Lag of every owned partition: the end minus the read position (which stops while a
/// batch is retried), or minus the committed offset before the first read. A partition
/// given to another process is its to report now: left at its last value here, a sum over
/// replicas would count it twice, so it is set to 0.
fn report_lag(lane: &'static str, topic: &str, view: &[PartitionView], reported: &mut HashMap<i32, i64>) {
    for p in view.iter().filter(|p| !p.owned) {
        if reported.remove(&p.partition).is_some() {
            telemetry::consumer_lag(lane, topic, p.partition, 0);
        }
    }
    for p in view.iter().filter(|p| p.owned) {
        let lag = (p.end - p.position.unwrap_or(p.done)).max(0);
        telemetry::consumer_lag(lane, topic, p.partition, lag);
        reported.insert(p.partition, lag);
    }
}

/// Every partition of `topic`: one metadata request, one offset request for the ends (and
/// one for the starts of partitions never committed), one committed-offsets request.
fn read(consumer: &LaneConsumer, topic: &str) -> KafkaResult<Vec<PartitionView>> {
    let metadata = consumer.fetch_metadata(Some(topic), BROKER_CALL_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let list = |offset: Offset, which: &[i32]| -> KafkaResult<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for p in which {
            list.add_partition_offset(topic, *p, offset)?;
        }
        Ok(list)
    };
    // ListOffsets takes a timestamp per partition; -1 (Offset::End) asks for the end.
    let ends = offsets(&consumer.offsets_for_times(list(Offset::End, &partitions)?, BROKER_CALL_TIMEOUT)?);
    let committed = offsets(&consumer.committed_offsets(list(Offset::Invalid, &partitions)?, BROKER_CALL_TIMEOUT)?);
    let never: Vec<i32> = partitions.iter().copied().filter(|p| !committed.contains_key(p)).collect();
    let starts = if never.is_empty() {
        HashMap::new()
    } else {
        offsets(&consumer.offsets_for_times(list(Offset::Beginning, &never)?, BROKER_CALL_TIMEOUT)?)
    };
    let positions = offsets(&consumer.position()?);
    let owned = consumer.context().owned();
    Ok(partitions
        .into_iter()
        .filter_map(|partition| {
            Some(PartitionView {
                partition,
                end: *ends.get(&partition)?,
                done: *committed.get(&partition).or_else(|| starts.get(&partition))?,
                position: positions.get(&partition).copied(),
                owned: owned.iter().any(|(t, p)| t == topic && *p == partition),
            })
        })
        .collect())
}

/// The real offsets of a list, by partition; errors and special offsets left out.
fn offsets(list: &TopicPartitionList) -> HashMap<i32, i64> {
    list.elements()
        .iter()
        .filter(|p| p.error().is_ok())
        .filter_map(|p| match p.offset() {
            Offset::Offset(o) if o >= 0 => Some((p.partition(), o)),
            _ => None,
        })
        .collect()
}

/// For each partition with messages past where the group is done, since when it has been
/// done at the same offset, as seen while this process was ready and its assignment
/// unchanged.
#[derive(Default)]
struct Stalls {
    since: HashMap<i32, (i64, Instant)>,
    assignment_seen: Option<Instant>,
}

impl Stalls {
    /// Takes one reading; returns the partitions stalled for `after`, and starts their
    /// clocks again (the rejoin it leads to needs time to work).
    fn observe(
        &mut self,
        now: Instant,
        ready: bool,
        assignment_changed: Option<Instant>,
        view: &[PartitionView],
        after: Duration,
    ) -> Vec<i32> {
        // Our own outage says nothing about the others: nothing is concluded from it,
        // and every clock starts again once it is over. Nor does a member that has not
        // joined the group yet judge it.
        if !ready || assignment_changed.is_none() {
            self.since.clear();
            return Vec::new();
        }
        // An assignment that just changed may be the group healing itself.
        if assignment_changed != self.assignment_seen {
            self.assignment_seen = assignment_changed;
            self.since.clear();
        }
        let mut stalled = Vec::new();
        for p in view {
            if p.done >= p.end {
                self.since.remove(&p.partition);
                continue;
            }
            let (done, since) = self.since.entry(p.partition).or_insert((p.done, now));
            if *done != p.done {
                (*done, *since) = (p.done, now);
            } else if now.duration_since(*since) >= after {
                stalled.push(p.partition);
            }
        }
        if !stalled.is_empty() {
            self.since.clear();
        }
        stalled.sort_unstable();
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, done: i64, end: i64) -> PartitionView {
        PartitionView { partition, end, done, position: None, owned: false }
    }

    const AFTER: Duration = Duration::from_secs(60);

    fn joined(t0: Instant) -> Option<Instant> {
        Some(t0 - Duration::from_secs(1))
    }

    #[test]
    fn a_partition_with_messages_and_no_commit_for_the_whole_window_is_stalled() {
        let mut stalls = Stalls::default();
        let t0 = Instant::now();
        let topic = [view(0, 10, 10), view(1, 5, 20)];
        assert!(stalls.observe(t0, true, joined(t0), &topic, AFTER).is_empty());
        assert!(stalls.observe(t0 + Duration::from_secs(59), true, joined(t0), &topic, AFTER).is_empty());
        assert_eq!(stalls.observe(t0 + AFTER, true, joined(t0), &topic, AFTER), vec![1]);
        // The clocks start again after a rejoin is asked for.
        assert!(stalls.observe(t0 + AFTER + Duration::from_secs(1), true, joined(t0), &topic, AFTER).is_empty());
    }

    #[test]
    fn progress_caught_up_partitions_and_idle_ones_are_not_stalled() {
        let mut stalls = Stalls::default();
        let t0 = Instant::now();
        stalls.observe(t0, true, joined(t0), &[view(0, 5, 20), view(1, 7, 7)], AFTER);
        // Partition 0 committed meanwhile (slowly), partition 1 has nothing to read.
        let later = [view(0, 6, 30), view(1, 7, 7)];
        assert!(stalls.observe(t0 + AFTER, true, joined(t0), &later, AFTER).is_empty());
        assert!(stalls.observe(t0 + AFTER + Duration::from_secs(30), true, joined(t0), &later, AFTER).is_empty());
        assert_eq!(stalls.observe(t0 + 2 * AFTER, true, joined(t0), &later, AFTER), vec![0]);
    }

    #[test]
    fn a_member_that_has_not_joined_yet_concludes_nothing() {
        let mut stalls = Stalls::default();
        let t0 = Instant::now();
        let topic = [view(0, 0, 100)];
        assert!(stalls.observe(t0, true, None, &topic, AFTER).is_empty());
        assert!(stalls.observe(t0 + 2 * AFTER, true, None, &topic, AFTER).is_empty());
    }

    #[test]
    fn our_own_outage_or_a_changed_assignment_starts_the_clocks_again() {
        let mut stalls = Stalls::default();
        let t0 = Instant::now();
        let topic = [view(3, 0, 100)];
        stalls.observe(t0, true, joined(t0), &topic, AFTER);
        // Not ready (a dependency of ours is down): every partition may stall for the
        // same reason, so nothing is concluded and the clocks start again.
        assert!(stalls.observe(t0 + Duration::from_secs(30), false, joined(t0), &topic, AFTER).is_empty());
        assert!(stalls.observe(t0 + Duration::from_secs(40), true, joined(t0), &topic, AFTER).is_empty());
        assert!(stalls.observe(t0 + Duration::from_secs(99), true, joined(t0), &topic, AFTER).is_empty());
        assert_eq!(stalls.observe(t0 + Duration::from_secs(100), true, joined(t0), &topic, AFTER), vec![3]);
        // A rebalance here: wait a whole window from it.
        let moved = Some(t0 + Duration::from_secs(101));
        assert!(stalls.observe(t0 + Duration::from_secs(110), true, moved, &topic, AFTER).is_empty());
        assert!(stalls.observe(t0 + Duration::from_secs(169), true, moved, &topic, AFTER).is_empty());
        assert_eq!(stalls.observe(t0 + Duration::from_secs(170), true, moved, &topic, AFTER), vec![3]);
    }
}
