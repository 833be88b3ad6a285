//! The exports lane (`LANE=exports`): written events of teams with export plugins, read
//! from the exports topic and handed to each plugin's `on_event` (one call per event) or
//! `export_events` (buffers cut by count, bytes and age), at least once through crashes
//! and outages.
//!
//! The event lanes publish a batch's written events ([`publish`]) before they commit it.
//! Here an offset is committed only once every export plugin of the event's team has
//! delivered it or given up on it ([`ledger`]); giving up (a plugin's error, or its
//! retries spent) puts the event in the exports dead-letter topic with the plugin and the
//! error, and `dlq replay --exports` sends it back to that plugin alone. A failing
//! destination is retried with back-off ([`buffers`]) while the other plugins go on; it
//! costs this lane lag, never the event lanes, and holds the commit (not the deliveries)
//! of other plugins no longer than its retries.

mod buffers;
mod ledger;
mod publish;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sluice_plugin_runtime::Hook;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ExportSettings;
use crate::consume::{self, BatchLimits, LaneConsumer};
use crate::dlq::{header, DeadLetters};
use crate::health::Health;
use crate::plugins::{Delivered, Plugins};
use crate::stopping::Stopping;
use crate::telemetry;
use crate::write::ClickHouse;
use buffers::{Buffers, Delivery, Item, Limits};
use ledger::{Ledger, Position, Read};
pub(crate) use publish::{headers, ExportsTopic, Written};

/// Everything the exports loop works with.
pub(crate) struct Lane<'a> {
    pub consumer: &'a Arc<LaneConsumer>,
    pub topic: String,
    pub limits: BatchLimits,
    pub plugins: Arc<Plugins>,
    pub ch: Arc<ClickHouse>,
    /// The exports dead-letter topic.
    pub dead: Arc<DeadLetters>,
    pub settings: ExportSettings,
    pub health: &'a Health,
    pub stopping: &'a Stopping,
}

/// A delivery's answers, one per event, after the given-up ones were dead-lettered.
struct Finished {
    delivery: Delivery,
    answers: Vec<Delivered>,
}

impl Lane<'_> {
    /// Reads and delivers until stopping; then delivers what is buffered within the
    /// drain deadline, commits what is finished, and leaves the rest to the next owner.
    pub(crate) async fn run(&self) {
        let s = &self.settings;
        let mut buffers = Buffers::new(Limits {
            max_events: s.buffer_max_events,
            max_bytes: s.buffer_max_bytes,
            max_age: s.buffer_max_age,
            backoff: s.retry_backoff,
            max_backoff: s.retry_max_backoff,
        });
        let mut ledger = Ledger::default();
        let mut ready: VecDeque<Delivery> = VecDeque::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut running = 0usize;
        let mut drained = false;
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let mut last_refresh: Option<Instant> = None;
        let deadline = self.stopping.deadline_passed();
        tokio::pin!(deadline);
        loop {
            self.health.tick();
            let stopping = self.stopping.is_cancelled();
            if stopping && !drained {
                // Every buffer goes now; retries waiting out a back-off are left
                // uncommitted, for the next owner.
                ready.extend(buffers.drain().into_iter().filter(|d| d.attempts == 0));
                drained = true;
            }
            while running < s.concurrency.max(1) {
                let Some(delivery) = ready.pop_front() else { break };
                running += 1;
                tokio::spawn(self.deliver(delivery, done_tx.clone()));
            }
            if stopping && running == 0 && ready.is_empty() {
                break;
            }
            let (events, bytes) = ledger.pending();
            telemetry::exports_pending(events);
            // Nothing is read before the plugin configurations are: an event of a team
            // whose exporters are not known yet would pass as having none.
            let room = events < s.max_pending_events && bytes < s.max_pending_bytes && self.known().await;
            if room && !stopping {
                if let Err(e) = consume::rejoin_if_asked(self.consumer, &self.topic) {
                    warn!(error = %e, "could not rejoin the consumer group; trying again");
                }
                let until = buffers.next_deadline().map(|d| d.saturating_duration_since(Instant::now().into_std()));
                let limits = BatchLimits {
                    max_wait: until
                        .map_or(self.limits.max_wait, |u| u.clamp(Duration::from_millis(10), self.limits.max_wait)),
                    ..self.limits
                };
                let batch = consume::next_batch(self.consumer, &limits).await;
                telemetry::consumed("exports", batch.len());
                self.catch_up(&batch, &mut last_refresh).await;
                for m in &batch {
                    self.intake(m, &mut ledger, &mut buffers, &mut ready).await;
                }
                ready.extend(buffers.seal_hook(Hook::OnEvent));
            } else {
                // At least every 200 ms: the loop's heartbeat is its liveness.
                let soon = Instant::now() + Duration::from_millis(200);
                let wake = buffers.next_deadline().map_or(soon, |at| Instant::from_std(at).min(soon));
                tokio::select! {
                    Some(f) = done_rx.recv() => {
                        running -= 1;
                        self.settle(f, &mut ledger, &mut buffers, stopping);
                    }
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = self.stopping.cancelled(), if !stopping => {}
                    _ = &mut deadline, if stopping => {
                        warn!(deliveries = running + ready.len(), "drain deadline: leaving deliveries unfinished for the next owner");
                        break;
                    }
                }
            }
            while let Ok(f) = done_rx.try_recv() {
                running -= 1;
                self.settle(f, &mut ledger, &mut buffers, stopping);
            }
            if !stopping {
                ready.extend(buffers.due(std::time::Instant::now()));
            }
            if last_commit.elapsed() >= s.commit_interval {
                self.commit(&ledger, &mut committed).await;
                last_commit = Instant::now();
            }
        }
        self.commit(&ledger, &mut committed).await;
        let (events, _) = ledger.pending();
        info!(unfinished = events, "exports lane stopped; unfinished events are the next owner's");
    }

    /// Whether the plugin configurations were read; tries once more if not.
    async fn known(&self) -> bool {
        if self.plugins.read_once() {
            return true;
        }
        if let Err(e) = self.plugins.refresh().await {
            warn!(error = %e, "plugin configurations not read yet; the exports lane waits");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.plugins.read_once()
    }

    /// An event lane published these because their team has export plugins. If this
    /// lane knows none for a team, its configurations are older than the event lane's
    /// (a plugin installed a moment ago): read them again, at most every few seconds,
    /// rather than pass the events as having no exporter.
    async fn catch_up(&self, batch: &[OwnedMessage], last: &mut Option<Instant>) {
        let unknown = batch.iter().any(|m| {
            header(m, headers::ONLY_PLUGIN).is_none()
                && header(m, headers::TEAM)
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_some_and(|team| self.plugins.exporters(team).is_empty())
        });
        if unknown && last.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
            *last = Some(Instant::now());
            if let Err(e) = self.plugins.refresh().await {
                warn!(error = %e, "could not read plugin configurations again");
            }
        }
    }

    /// Takes one message: whose plugins it goes to, into their buffers.
    async fn intake(
        &self,
        m: &OwnedMessage,
        ledger: &mut Ledger,
        buffers: &mut Buffers,
        ready: &mut VecDeque<Delivery>,
    ) {
        let partition = (m.topic().to_string(), m.partition());
        let epoch = self.consumer.context().epoch(&partition).unwrap_or_default();
        let at = Position { read: Read { topic: partition.0, partition: partition.1, epoch }, offset: m.offset() };
        let payload = m.payload().unwrap_or_default();
        let team = header(m, headers::TEAM)
            .and_then(|t| t.parse::<i64>().ok())
            .or_else(|| serde_json::from_slice::<serde_json::Value>(payload).ok()?.get("team_id")?.as_i64());
        let text = std::str::from_utf8(payload).ok().map(str::to_string);
        let (Some(team), Some(text)) = (team, text) else {
            // Not an event the event lanes published: kept with why, and passed; unless
            // it could not be kept, when it stays unfinished for the next owner.
            let reason = [
                ("dlq_stage", "exports"),
                ("dlq_error", "not an exported event: no team_id, or not UTF-8 JSON"),
                ("dlq_error_class", "unreadable"),
            ];
            let kept = publish_dead(&self.dead, payload, m.key(), m.topic(), &reason, self.stopping).await;
            ledger.read(&at, u32::from(!kept), 0);
            return;
        };
        let only = header(m, headers::ONLY_PLUGIN).and_then(|t| t.parse::<i64>().ok());
        let targets: Vec<(i64, Hook)> = match only {
            Some(id) => {
                let hook = match header(m, headers::ONLY_HOOK) {
                    Some("on_event") => Hook::OnEvent,
                    _ => Hook::ExportEvents,
                };
                vec![(id, hook)]
            }
            None => self.plugins.exporters(team),
        };
        ledger.read(&at, targets.len() as u32, text.len());
        let item = Arc::new(Item { at, key: m.key().map(<[u8]>::to_vec), text });
        let now = std::time::Instant::now();
        for (id, hook) in targets {
            ready.extend(buffers.add(team, id, hook, item.clone(), now));
        }
    }

    /// One delivery, in a task of its own: the plugin's call, then the dead letters of
    /// what it gave up on.
    fn deliver(
        &self,
        mut delivery: Delivery,
        done: tokio::sync::mpsc::UnboundedSender<Finished>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let plugins = self.plugins.clone();
        let ch = self.ch.clone();
        let dead = self.dead.clone();
        let max_attempts = self.settings.max_attempts.max(1);
        let stopping = self.stopping.clone();
        async move {
            delivery.attempts += 1;
            let texts = delivery.items.iter().map(|i| i.text.clone()).collect();
            let mut answers = plugins.deliver(delivery.team, delivery.id, delivery.hook, texts, &ch).await;
            for (item, answer) in delivery.items.iter().zip(answers.iter_mut()) {
                if let Delivered::Retry(why) = answer {
                    if delivery.attempts >= max_attempts {
                        *answer = Delivered::GaveUp(format!("gave up after {} attempts: {why}", delivery.attempts));
                    }
                }
                let Delivered::GaveUp(why) = answer else { continue };
                let sent = send_dead(&dead, item, &delivery, why, &stopping).await;
                if !sent {
                    // Not in the dead letters, so not finished: left for the next owner.
                    *answer = Delivered::Retry(why.clone());
                }
            }
            let _ = done.send(Finished { delivery, answers });
        }
    }

    /// What came of a delivery: finished events leave the ledger, the rest are retried.
    fn settle(&self, f: Finished, ledger: &mut Ledger, buffers: &mut Buffers, stopping: bool) {
        let Finished { delivery, answers } = f;
        let hook = delivery.hook.name();
        let mut again = Vec::new();
        let (mut delivered, mut gave_up) = (0, 0);
        for (item, answer) in delivery.items.iter().zip(answers) {
            match answer {
                Delivered::Done => {
                    delivered += 1;
                    ledger.finish(&item.at);
                }
                Delivered::GaveUp(_) => {
                    gave_up += 1;
                    ledger.finish(&item.at);
                }
                Delivered::Retry(_) => again.push(item.clone()),
            }
        }
        telemetry::exports(hook, "delivered", delivered);
        telemetry::exports(hook, "gave_up", gave_up);
        telemetry::exports(hook, "retried", again.len());
        if !again.is_empty() && !stopping {
            let retry = Delivery { items: again, ..delivery };
            let wait = buffers.retry(retry.clone(), std::time::Instant::now());
            info!(
                plugin_config = retry.id,
                hook,
                events = retry.items.len(),
                attempt = retry.attempts,
                retry_in_ms = wait.as_millis() as u64,
                "export delivery to be retried"
            );
        }
    }

    /// Commits each owned partition up to its first unfinished event, if that moved.
    async fn commit(&self, ledger: &Ledger, committed: &mut HashMap<(String, i32), i64>) {
        let context = self.consumer.context();
        let moved: Vec<(Read, i64)> = ledger
            .committable()
            .into_iter()
            .filter(|(read, offset)| {
                let p = (read.topic.clone(), read.partition);
                context.epoch(&p) == Some(read.epoch) && committed.get(&p) != Some(offset)
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        let offsets = moved.iter().map(|(r, o)| (r.topic.as_str(), r.partition, *o));
        match consume::commit_offsets(self.consumer, offsets).await {
            Ok(()) => {
                for (read, offset) in moved {
                    committed.insert((read.topic, read.partition), offset);
                }
            }
            Err(e) => {
                warn!(error = %e, "exports offset commit failed; the next commit covers it");
                telemetry::commit_abandoned();
            }
        }
    }
}

/// Puts one given-up event in the exports dead-letter topic, trying again while the
/// broker refuses, until stopping. `false`: it is not there.
async fn send_dead(dead: &DeadLetters, item: &Item, delivery: &Delivery, why: &str, stopping: &Stopping) -> bool {
    let team = delivery.team.to_string();
    let id = delivery.id.to_string();
    let attempts = delivery.attempts.to_string();
    let reason = [
        ("dlq_stage", "exports"),
        ("dlq_error", why),
        ("dlq_error_class", "export_gave_up"),
        ("dlq_team_id", team.as_str()),
        ("dlq_plugin_config_id", id.as_str()),
        ("dlq_hook", delivery.hook.name()),
        ("dlq_attempts", attempts.as_str()),
    ];
    publish_dead(dead, item.text.as_bytes(), item.key.as_deref(), &item.at.read.topic, &reason, stopping).await
}

/// Publishes a dead letter, trying again while the broker refuses, until stopping.
async fn publish_dead(
    dead: &DeadLetters,
    payload: &[u8],
    key: Option<&[u8]>,
    topic: &str,
    reason: &[(&str, &str)],
    stopping: &Stopping,
) -> bool {
    let mut wait = Duration::from_millis(200);
    loop {
        match dead.publish(payload, key, None, topic, reason).await {
            Ok(()) => return true,
            Err(e) if stopping.is_cancelled() => {
                warn!(error = %e, "exports dead letter not sent while stopping; left unfinished");
                return false;
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "exports dead letter not sent; retrying");
                telemetry::dependency_retry("kafka");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}
