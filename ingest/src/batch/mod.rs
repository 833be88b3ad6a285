//! One consumed batch through the per-event steps, to rows and dead letters.
//!
//! The batch is first *planned* into groups that must each run in offset order: all
//! events of one `token:distinct_id`, joined with every other group whose distinct ids
//! share a person at the start of the batch or are merged by an event of the batch.
//! Groups then run concurrently (bounded). As no two groups can touch the same person,
//! persons come out as if the batch had run one event at a time, whatever the batch
//! size and however the groups were scheduled.

use std::collections::HashMap;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;
use sluice_schema::CapturedEvent;

use crate::dlq::{DeadLetter, DeadLetters};
use crate::exports::{ExportsTopic, Written};
use crate::plugins::AfterPlugins;
use crate::process::{self, DependencyDown, Deps, Fate, Prepared};
use crate::rows::{Encoded, Table};
use crate::stores::Stores;
use crate::telemetry;
use crate::write::{ClickHouse, ClickHouseError, SourcedRow};

mod plan;

/// Why a batch is not done. Every kind means "retry the whole batch" (every write is
/// idempotent, and nothing is committed until the batch is done); the kind names the
/// dependency that failed, for the retry metric and the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("dead-letter topic: {0}")]
    DeadLetters(#[from] rdkafka::error::KafkaError),
    #[error("exports topic: {0}")]
    Exports(rdkafka::error::KafkaError),
}

impl From<DependencyDown> for BatchError {
    fn from(down: DependencyDown) -> Self {
        BatchError::Postgres(down.0)
    }
}

impl BatchError {
    /// The `dependency` label of `ingest_dependency_retries_total`.
    pub(crate) fn dependency(&self) -> &'static str {
        match self {
            BatchError::Postgres(_) => "postgres",
            BatchError::ClickHouse(_) => "clickhouse",
            BatchError::DeadLetters(_) | BatchError::Exports(_) => "kafka",
        }
    }
}

/// Processes every event of the batch, writes the rows and the dead letters, and
/// publishes the written events of teams with export plugins: the phases below, in order.
pub(crate) async fn handle<S: Stores>(
    batch: &[OwnedMessage],
    deps: &Deps<'_, S>,
    ch: &ClickHouse,
    dead_letters: &DeadLetters,
    lane: &'static str,
    concurrency: usize,
    exports: Option<&ExportsTopic>,
) -> Result<(), BatchError> {
    let mut parsed = parse(batch);
    let plugin_logs = match deps.plugins {
        Some(plugins) => run_plugins(&mut parsed, deps, plugins).await?,
        None => Vec::new(),
    };
    let step = Instant::now();
    let prepared = prepare(parsed, deps).await?;
    let step = telemetry::step("prepare", step);
    let groups = plan::plan_batch(&prepared, deps).await?;
    let outcomes = process_groups(prepared, groups, deps, concurrency).await?;
    let step = telemetry::step("persons", step);
    let mut sorted = Sorted::from(outcomes);
    let token = batch_token(lane, batch);
    let refused = write_rows(ch, &sorted.rows, &token).await?;
    write_plugin_logs(ch, plugin_logs, &token).await?;
    telemetry::step("write", step);
    sorted.dead_letter_refused(&refused);
    for (i, d) in &sorted.dead {
        dead_letters.send(&batch[*i], d, 1).await?;
        telemetry::dead_lettered(d.stage);
    }
    if let (Some(plugins), Some(exports)) = (deps.plugins, exports) {
        let written = for_export(plugins, ch.flavor, &sorted, &refused);
        exports.publish(&written).await.map_err(BatchError::Exports)?;
        telemetry::exports_published(written.len());
    }
    let now = time::OffsetDateTime::now_utc();
    let written = sorted.captured_at.iter().filter(|(i, _)| !refused.contains_key(i));
    telemetry::end_to_end_lags(written.map(|(_, at)| (now - *at).as_seconds_f64()));
    telemetry::processed(lane, sorted.rows.events.iter().filter(|(i, _)| !refused.contains_key(i)).count());
    Ok(())
}

/// Step 1 for every message: the capture message, or why it is a dead letter.
fn parse(batch: &[OwnedMessage]) -> Vec<Parsed> {
    batch
        .iter()
        .map(|m| match process::parse_message(m.payload().unwrap_or_default()) {
            Ok(c) => Parsed::Event(c),
            Err(d) => Parsed::Dead(d),
        })
        .collect()
}

/// Steps 1–7 for every event (one query for the batch's teams not cached).
async fn prepare<S: Stores>(parsed: Vec<Parsed>, deps: &Deps<'_, S>) -> Result<Vec<Prepared>, DependencyDown> {
    let tokens: Vec<&str> = parsed.iter().filter_map(Parsed::event).map(|c| c.token.as_str()).collect();
    deps.stores.load_teams(&tokens).await?;
    let mut prepared = Vec::with_capacity(parsed.len());
    for p in parsed {
        prepared.push(match p {
            Parsed::Event(captured) => process::prepare(captured, None, deps).await?,
            Parsed::Plugged(captured, data) => process::prepare(captured, Some(data), deps).await?,
            Parsed::Dead(dead) => Prepared::Done(Fate::Dead(dead)),
            Parsed::Dropped(cause) => Prepared::Done(Fate::Drop { cause, warnings: Vec::new() }),
        });
    }
    Ok(prepared)
}

/// Steps 8–11, each group in offset order, groups concurrently (bounded); outcomes in
/// message order.
async fn process_groups<S: Stores>(
    prepared: Vec<Prepared>,
    groups: Vec<Vec<usize>>,
    deps: &Deps<'_, S>,
    concurrency: usize,
) -> Result<Vec<(usize, Fate)>, DependencyDown> {
    let mut prepared: Vec<Option<Prepared>> = prepared.into_iter().map(Some).collect();
    let work = groups.into_iter().map(|group| {
        let events: Vec<_> =
            group.into_iter().map(|i| (i, prepared[i].take().expect("a message is in one group"))).collect();
        async move {
            let mut outcomes = Vec::with_capacity(events.len());
            for (i, event) in events {
                let outcome = match event {
                    Prepared::Ready(ready) => process::finish(*ready, deps).await?,
                    Prepared::Done(fate) => fate,
                };
                outcomes.push((i, outcome));
            }
            Ok::<_, DependencyDown>(outcomes)
        }
    });
    let done: Vec<Vec<(usize, Fate)>> =
        futures::stream::iter(work).buffer_unordered(concurrency.max(1)).try_collect().await?;
    let mut outcomes: Vec<(usize, Fate)> = done.into_iter().flatten().collect();
    outcomes.sort_unstable_by_key(|(i, _)| *i);
    Ok(outcomes)
}

/// ClickHouse rows of a batch, each with the index of the message it came from.
#[derive(Default)]
struct Rows {
    events: Vec<SourcedRow>,
    persons: Vec<SourcedRow>,
    distinct_ids: Vec<SourcedRow>,
    groups: Vec<SourcedRow>,
    warnings: Vec<SourcedRow>,
}

/// The outcomes sorted by what becomes of them.
#[derive(Default)]
struct Sorted {
    rows: Rows,
    dead: Vec<(usize, DeadLetter)>,
    captured_at: Vec<(usize, time::OffsetDateTime)>,
    team_of: HashMap<usize, i64>,
}

impl From<Vec<(usize, Fate)>> for Sorted {
    fn from(outcomes: Vec<(usize, Fate)>) -> Sorted {
        let mut sorted = Sorted::default();
        for (i, outcome) in outcomes {
            match outcome {
                Fate::Row { event, team_id, rows: side, warnings, captured_at: at } => {
                    sorted.team_of.insert(i, team_id);
                    let rows = &mut sorted.rows;
                    let sourced = |r: Encoded| (i, r);
                    rows.events.push((i, event));
                    rows.persons.extend(side.persons.into_iter().map(sourced));
                    rows.distinct_ids.extend(side.distinct_ids.into_iter().map(sourced));
                    rows.groups.extend(side.groups.into_iter().map(sourced));
                    rows.warnings.extend(warnings.into_iter().map(sourced));
                    sorted.captured_at.push((i, at));
                }
                Fate::Drop { cause, warnings } => {
                    telemetry::dropped(cause);
                    sorted.rows.warnings.extend(warnings.into_iter().map(|r| (i, r)));
                }
                Fate::Dead(d) => sorted.dead.push((i, d)),
            }
        }
        sorted
    }
}

impl Sorted {
    /// A refused row's event goes to the dead letters whole; replaying it after the cause
    /// is fixed rewrites every row it makes, which are all idempotent.
    fn dead_letter_refused(&mut self, refused: &HashMap<usize, String>) {
        for (i, error) in refused {
            let d = DeadLetter {
                stage: "write",
                error: error.clone(),
                error_class: "clickhouse_refused",
                team_id: self.team_of.get(i).copied(),
            };
            self.dead.push((*i, d));
        }
    }
}

/// Writes every table's rows; returns the messages whose rows ClickHouse refused for
/// their data, with why.
async fn write_rows(ch: &ClickHouse, rows: &Rows, token: &str) -> Result<HashMap<usize, String>, ClickHouseError> {
    let tables = [
        (Table::Events, &rows.events),
        (Table::Persons, &rows.persons),
        (Table::PersonDistinctIds, &rows.distinct_ids),
        (Table::Groups, &rows.groups),
        (Table::IngestionWarnings, &rows.warnings),
    ];
    // The tables are written at once: the batch waits for the slowest insert, not for
    // their sum. Each insert is idempotent, so any failure retries them all.
    let tokens = tables.map(|(table, _)| format!("{token}-{}", table.name()));
    let inserts = tables.iter().zip(&tokens).map(|((table, table_rows), token)| ch.insert(*table, table_rows, token));
    let results = futures::future::join_all(inserts).await;
    let mut refused: HashMap<usize, String> = HashMap::new();
    for ((table, table_rows), result) in tables.into_iter().zip(results) {
        let (name, refused_here) = (table.name(), result?);
        telemetry::clickhouse_rows(name, table_rows.len() - refused_here.len());
        telemetry::clickhouse_refused(name, refused_here.len());
        for (i, error) in refused_here {
            refused.entry(i).or_insert(format!("{name}: {error}"));
        }
    }
    Ok(refused)
}

/// The plugins' log lines. They are the plugins', not the events': one ClickHouse refuses
/// is counted, not dead-lettered.
async fn write_plugin_logs(ch: &ClickHouse, logs: Vec<Encoded>, token: &str) -> Result<(), ClickHouseError> {
    if logs.is_empty() {
        return Ok(());
    }
    let rows: Vec<SourcedRow> = logs.into_iter().map(|r| (usize::MAX, r)).collect();
    let refused = ch.insert(Table::PluginLogEntries, &rows, &format!("{token}-plugin-logs")).await?;
    telemetry::clickhouse_refused(Table::PluginLogEntries.name(), refused.len());
    Ok(())
}

/// Step 12: the written events of teams with export plugins, as plugins see them, for
/// the exports lane.
fn for_export(
    plugins: &crate::plugins::Plugins,
    flavor: sluice_schema::clickhouse::Flavor,
    sorted: &Sorted,
    refused: &HashMap<usize, String>,
) -> Vec<Written> {
    let mut out = Vec::new();
    for (i, row) in &sorted.rows.events {
        let Some(team) = sorted.team_of.get(i).copied().filter(|t| plugins.has_exports(*t)) else { continue };
        if refused.contains_key(i) {
            continue;
        }
        // Only exported events are read back from their bytes.
        let row = Value::Object(Table::Events.decode(flavor, row).expect("ingest's own row reads"));
        let distinct_id = row.get("distinct_id").and_then(Value::as_str).unwrap_or_default();
        let payload = crate::plugins::on_event_payload(&row).to_string().into_bytes();
        out.push(Written { team, key: format!("{team}:{distinct_id}"), payload });
    }
    out
}

/// What names this batch's inserts, which modern servers (and replicated tables on
/// them) drop when repeated: each partition's first and last offset and count. Not the
/// first message alone: a batch read again after a crash may start at the same offset
/// and hold more messages, and must then be written (`FINAL` hides its repeated rows),
/// not dropped whole as a repeat of the shorter one.
fn batch_token(lane: &str, batch: &[OwnedMessage]) -> String {
    let mut spans: std::collections::BTreeMap<(&str, i32), (i64, i64, usize)> = Default::default();
    for m in batch {
        let span = spans.entry((m.topic(), m.partition())).or_insert((m.offset(), m.offset(), 0));
        *span = (span.0.min(m.offset()), span.1.max(m.offset()), span.2 + 1);
    }
    let parts: Vec<String> =
        spans.iter().map(|((topic, p), (first, last, n))| format!("{topic}-{p}-{first}-{last}-{n}")).collect();
    format!("{lane}-{}", parts.join("-"))
}

/// A message after step 1 (and 5, plugins).
enum Parsed {
    Event(CapturedEvent),
    /// An event after its plugins, with its data as they left it, parsed.
    Plugged(CapturedEvent, serde_json::Map<String, Value>),
    Dead(DeadLetter),
    Dropped(&'static str),
}

impl Parsed {
    fn event(&self) -> Option<&CapturedEvent> {
        match self {
            Parsed::Event(c) | Parsed::Plugged(c, _) => Some(c),
            _ => None,
        }
    }
}

/// Step 5 for the whole batch: one chain run per team with plugins. Returns the
/// plugins' log rows.
async fn run_plugins<S: Stores>(
    parsed: &mut [Parsed],
    deps: &Deps<'_, S>,
    plugins: &crate::plugins::Plugins,
) -> Result<Vec<Encoded>, sqlx::Error> {
    let tokens: Vec<&str> = parsed.iter().filter_map(Parsed::event).map(|c| c.token.as_str()).collect();
    deps.stores.load_teams(&tokens).await?;
    let mut by_team: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        let Some(c) = p.event() else { continue };
        let Some(team) = deps.stores.team(&c.token).await? else { continue };
        // Restricted events are dropped before plugins see them (step 3 comes first).
        if plugins.has_chain(team.id) && !deps.restrictions.drops(&c.token, &c.distinct_id) {
            by_team.entry(team.id).or_default().push(i);
        }
    }
    let mut logs = Vec::new();
    for (team, indices) in by_team {
        let events: Vec<CapturedEvent> = indices
            .iter()
            .map(|&i| match std::mem::replace(&mut parsed[i], Parsed::Dropped("plugin")) {
                Parsed::Event(c) => c,
                _ => unreachable!("only events were picked"),
            })
            .collect();
        let applied = plugins.apply(team, events, deps.flavor).await;
        logs.extend(applied.logs);
        for (i, event) in indices.into_iter().zip(applied.events) {
            parsed[i] = match event {
                AfterPlugins::Keep(c, data) => Parsed::Plugged(c, data),
                AfterPlugins::Dropped => Parsed::Dropped("plugin"),
                AfterPlugins::Dead(error) => Parsed::Dead(DeadLetter {
                    stage: "plugins",
                    error,
                    error_class: "required_plugin",
                    team_id: Some(team),
                }),
            };
        }
    }
    Ok(logs)
}

#[cfg(test)]
mod tests;
