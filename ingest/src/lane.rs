//! The lane's loop: read a batch, handle it until it is written (retrying while a
//! dependency is down, so an outage becomes lag and never loss), commit it, and stop
//! between batches when asked; and how its Kafka clients close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tracing::{debug, warn};

use crate::batch;
use crate::consume::{self, BatchLimits, LaneConsumer};
use crate::dlq::DeadLetters;
use crate::exports::ExportsTopic;
use crate::health::Health;
use crate::process::Deps;
use crate::stopping::Stopping;
use crate::telemetry;
use crate::write::ClickHouse;

/// Everything the loop works with.
pub(crate) struct Loop<'a> {
    pub(crate) consumer: &'a Arc<LaneConsumer>,
    pub(crate) topic: String,
    pub(crate) limits: BatchLimits,
    pub(crate) deps: Deps<'a>,
    pub(crate) ch: &'a ClickHouse,
    pub(crate) dead_letters: &'a DeadLetters,
    pub(crate) lane: &'static str,
    /// Groups of a batch handled at once (`BATCH_CONCURRENCY`).
    pub(crate) concurrency: usize,
    /// Where written events of teams with export plugins go (`None`: plugins are off).
    pub(crate) exports: Option<&'a ExportsTopic>,
    /// Longest pause between retries of a batch.
    pub(crate) max_backoff: Duration,
    pub(crate) health: &'a Health,
    pub(crate) stopping: &'a Stopping,
    /// After SIGTERM, the batch in flight's time to be written and committed.
    pub(crate) drain: Duration,
}

/// How the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// After committing its last batch.
    Committed,
    /// With the batch in flight not written: it is the next owner's to do.
    LeftUncommitted,
}

impl Loop<'_> {
    pub(crate) async fn run(&self) -> Ended {
        let drained = self.stopping.deadline_passed();
        tokio::pin!(drained);
        loop {
            self.health.tick();
            if let Err(e) = consume::rejoin_if_asked(self.consumer, &self.topic) {
                warn!(error = %e, "could not rejoin the consumer group; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let batch = tokio::select! {
                b = consume::next_batch(self.consumer, &self.limits) => b,
                _ = self.stopping.cancelled() => return Ended::Committed,
            };
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            telemetry::consumed(self.lane, batch.len());
            let written = tokio::select! {
                w = self.write(&batch) => w,
                _ = &mut drained => {
                    warn!(drain_ms = self.drain.as_millis() as u64, "drain timeout: leaving the batch in flight uncommitted");
                    false
                }
            };
            if !written {
                return Ended::LeftUncommitted;
            }
            self.health.batch_failing(false);
            commit(self.consumer, &batch, self.stopping).await;
            telemetry::batch(batch.len(), started.elapsed().as_secs_f64());
            debug!(
                events = batch.len(),
                first = ?batch.first().map(|m| (m.partition(), m.offset())),
                last = ?batch.last().map(|m| (m.partition(), m.offset())),
                "batch written and committed"
            );
            if self.stopping.is_cancelled() {
                return Ended::Committed;
            }
        }
    }

    /// Handles the batch until it is written; `false` when stopping cut it short. Until
    /// it is written and committed nothing else is read.
    async fn write(&self, batch: &[OwnedMessage]) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            self.health.tick();
            let handled =
                batch::handle(batch, &self.deps, self.ch, self.dead_letters, self.lane, self.concurrency, self.exports)
                    .await;
            match handled {
                Ok(()) => return true,
                Err(e) if self.stopping.is_cancelled() => {
                    warn!(error = %e, "batch not written while stopping; leaving it uncommitted");
                    return false;
                }
                Err(e) => {
                    self.health.batch_failing(true);
                    telemetry::dependency_retry(e.dependency());
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not written; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stopping.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

/// Commits a written batch. Retried a few times; a commit given up is covered by the
/// next commit of the same partitions (and until then a new owner processes some events
/// again), so it never holds the lane.
async fn commit(consumer: &Arc<LaneConsumer>, batch: &[OwnedMessage], stopping: &Stopping) {
    for attempt in 1..=5 {
        match consume::commit(consumer, batch).await {
            Ok(()) => return,
            Err(e) if consume::commit_is_hopeless(&e) || attempt == 5 || stopping.is_cancelled() => {
                warn!(error = %e, "offset commit given up; the next commit covers it");
                telemetry::commit_abandoned();
                return;
            }
            Err(e) => {
                warn!(error = %e, "offset commit failed; retrying");
                telemetry::dependency_retry("kafka");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Closes the Kafka clients within `within`. librdkafka's consumer close leaves the group
/// through the coordinator and waits for it without a deadline: with the broker gone the
/// process would never exit (seen in the chaos run). Everything is committed or left for
/// the next owner by now, so the close happens on a thread of its own and is abandoned
/// after `within`.
pub(crate) fn close_kafka(consumer: Arc<LaneConsumer>, dead_letters: Arc<DeadLetters>, within: Duration) {
    let (closed, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        drop(dead_letters);
        let _ = closed.send(());
    });
    if wait.recv_timeout(within).is_err() {
        warn!(
            within_ms = within.as_millis() as u64,
            "kafka clients did not close in time (broker unreachable?); exiting without"
        );
    }
}
