//! One consumed batch through the per-event steps, to rows and dead letters.
//!
//! The batch is first *planned* into groups that must each run in offset order: all
//! events of one `token:distinct_id`, joined with every other group whose distinct ids
//! share a person at the start of the batch or are merged by an event of the batch.
//! Groups then run concurrently (bounded). As no two groups can touch the same person,
//! persons come out as if the batch had run one event at a time, whatever the batch
//! size and however the groups were scheduled.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;
use sluice_schema::CapturedEvent;

use crate::dlq::{DeadLetter, DeadLetters};
use crate::plugins::AfterPlugins;
use crate::process::{self, DependencyDown, Deps, Outcome};
use crate::telemetry;
use crate::write::{ClickHouse, SourcedRow};

/// What the plan knows of an event before processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub team: i64,
    pub distinct_id: String,
    /// The id a merge event merges into `distinct_id`.
    pub merge_source: Option<String>,
}

/// Groups of message indices, each in ascending (offset) order, ordered by their first
/// message. `None` members (unparseable, unknown team) touch no person and stand alone.
pub(crate) fn plan(members: &[Option<Member>], person_of: impl Fn(i64, &str) -> Option<i64>) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..members.len()).collect();
    let mut first_of_id: HashMap<(i64, &str), usize> = HashMap::new();
    let mut first_of_person: HashMap<(i64, i64), usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        let Some(m) = m else { continue };
        for id in std::iter::once(m.distinct_id.as_str()).chain(m.merge_source.as_deref()) {
            let first = *first_of_id.entry((m.team, id)).or_insert(i);
            union(&mut parent, i, first);
            if let Some(person) = person_of(m.team, id) {
                let first = *first_of_person.entry((m.team, person)).or_insert(i);
                union(&mut parent, i, first);
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_root: HashMap<usize, usize> = HashMap::new();
    for i in 0..members.len() {
        let root = find(&mut parent, i);
        let g = *group_of_root.entry(root).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (a, b) = (find(parent, a), find(parent, b));
    // The smaller index as root keeps each group's root its first message.
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    parent[high] = low;
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

/// Processes every event of the batch, writes the rows and the dead letters. Any error
/// means "retry the whole batch": every write is idempotent.
pub(crate) async fn handle(
    batch: &[OwnedMessage],
    deps: &Deps<'_>,
    ch: &ClickHouse,
    dead_letters: &DeadLetters,
    lane: &'static str,
    concurrency: usize,
    on_event_wait: std::time::Duration,
) -> anyhow::Result<()> {
    let mut parsed: Vec<Parsed> = batch
        .iter()
        .map(|m| match process::parse_message(m.payload().unwrap_or_default()) {
            Ok(c) => Parsed::Event(c),
            Err(d) => Parsed::Dead(d),
        })
        .collect();
    let plugin_logs = match deps.plugins {
        Some(plugins) => {
            run_plugins(&mut parsed, deps, plugins).await.inspect_err(|_| telemetry::dependency_retry("postgres"))?
        }
        None => Vec::new(),
    };
    let groups = plan_batch(&parsed, deps).await.inspect_err(|_| telemetry::dependency_retry("postgres"))?;

    let mut parsed: Vec<Option<Parsed>> = parsed.into_iter().map(Some).collect();
    let work = groups.into_iter().map(|group| {
        let events: Vec<_> =
            group.into_iter().map(|i| (i, parsed[i].take().expect("a message is in one group"))).collect();
        async move {
            let mut outcomes = Vec::with_capacity(events.len());
            for (i, event) in events {
                let outcome = match event {
                    Parsed::Event(captured) => process::process(captured, deps).await?,
                    Parsed::Dead(dead) => Outcome::Dead(dead),
                    Parsed::Dropped(cause) => Outcome::Drop { cause, warnings: Vec::new() },
                };
                outcomes.push((i, outcome));
            }
            Ok::<_, DependencyDown>(outcomes)
        }
    });
    let done: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(work)
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
        .inspect_err(|_| telemetry::dependency_retry("postgres"))?;
    let mut outcomes: Vec<(usize, Outcome)> = done.into_iter().flatten().collect();
    outcomes.sort_unstable_by_key(|(i, _)| *i);

    let mut rows = Rows::default();
    let mut dead: Vec<(usize, DeadLetter)> = Vec::new();
    let mut captured_at = Vec::new();
    let mut team_of: HashMap<usize, i64> = HashMap::new();
    for (i, outcome) in outcomes {
        match outcome {
            Outcome::Row { event, rows: side, warnings, captured_at: at } => {
                if let Some(team) = event.get("team_id").and_then(Value::as_i64) {
                    team_of.insert(i, team);
                }
                rows.events.push((i, event));
                rows.persons.extend(side.persons.into_iter().map(|r| (i, r)));
                rows.distinct_ids.extend(side.distinct_ids.into_iter().map(|r| (i, r)));
                rows.groups.extend(side.groups.into_iter().map(|r| (i, r)));
                rows.warnings.extend(warnings.into_iter().map(|r| (i, r)));
                captured_at.push((i, at));
            }
            Outcome::Drop { cause, warnings } => {
                telemetry::dropped(cause);
                rows.warnings.extend(warnings.into_iter().map(|r| (i, r)));
            }
            Outcome::Dead(d) => dead.push((i, d)),
        }
    }

    let first = batch.first().map(|m| (m.topic(), m.partition(), m.offset())).unwrap_or_default();
    let token = format!("{lane}-{}-{}-{}", first.0, first.1, first.2);
    let mut refused: HashMap<usize, String> = HashMap::new();
    for (table, table_rows) in [
        ("events", &rows.events),
        ("persons", &rows.persons),
        ("person_distinct_ids", &rows.distinct_ids),
        ("groups", &rows.groups),
        ("ingestion_warnings", &rows.warnings),
    ] {
        let refused_here = ch
            .insert(table, table_rows, &format!("{token}-{table}"))
            .await
            .inspect_err(|_| telemetry::dependency_retry("clickhouse"))?;
        telemetry::clickhouse_rows(table, table_rows.len() - refused_here.len());
        telemetry::clickhouse_refused(table, refused_here.len());
        for (i, error) in refused_here {
            refused.entry(i).or_insert(format!("{table}: {error}"));
        }
    }
    if !plugin_logs.is_empty() {
        // Log lines are the plugins', not the events': one ClickHouse refuses is counted,
        // not dead-lettered.
        let rows: Vec<SourcedRow> = plugin_logs.into_iter().map(|r| (usize::MAX, r)).collect();
        let refused_logs = ch
            .insert("plugin_log_entries", &rows, &format!("{token}-plugin-logs"))
            .await
            .inspect_err(|_| telemetry::dependency_retry("clickhouse"))?;
        telemetry::clickhouse_refused("plugin_log_entries", refused_logs.len());
    }
    // A refused row's event goes to the dead letters whole; replaying it after the cause
    // is fixed rewrites every row it makes, which are all idempotent.
    for (i, error) in &refused {
        let d = DeadLetter {
            stage: "write",
            error: error.clone(),
            error_class: "clickhouse_refused",
            team_id: team_of.get(i).copied(),
        };
        dead.push((*i, d));
    }
    for (i, d) in &dead {
        dead_letters.send(&batch[*i], d, 1).await?;
        telemetry::dead_lettered(d.stage);
    }

    // Step 12: the written events to the teams' on_event plugins, off the commit path.
    if let Some(plugins) = deps.plugins {
        let mut by_team: HashMap<i64, Vec<Value>> = HashMap::new();
        for (i, row) in &rows.events {
            let Some(team) = team_of.get(i).copied().filter(|t| plugins.has_on_event(*t)) else { continue };
            if !refused.contains_key(i) {
                by_team.entry(team).or_default().push(crate::plugins::on_event_payload(row));
            }
        }
        for (team, events) in by_team {
            plugins.enqueue_on_event(team, events, on_event_wait).await;
        }
    }

    let now = time::OffsetDateTime::now_utc();
    for (_, at) in captured_at.iter().filter(|(i, _)| !refused.contains_key(i)) {
        telemetry::end_to_end_lag((now - *at).as_seconds_f64());
    }
    telemetry::processed(lane, rows.events.iter().filter(|(i, _)| !refused.contains_key(i)).count());
    Ok(())
}

/// A message after step 1 (and 5, plugins).
enum Parsed {
    Event(CapturedEvent),
    Dead(DeadLetter),
    Dropped(&'static str),
}

impl Parsed {
    fn event(&self) -> Option<&CapturedEvent> {
        match self {
            Parsed::Event(c) => Some(c),
            _ => None,
        }
    }
}

/// Step 5 for the whole batch: one chain run per team with plugins. Returns the
/// plugins' log rows.
async fn run_plugins(
    parsed: &mut [Parsed],
    deps: &Deps<'_>,
    plugins: &crate::plugins::Plugins,
) -> Result<Vec<Value>, sqlx::Error> {
    let tokens: Vec<&str> = parsed.iter().filter_map(Parsed::event).map(|c| c.token.as_str()).collect();
    deps.teams.load(&tokens).await?;
    let mut by_team: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        let Some(c) = p.event() else { continue };
        let Some(team) = deps.teams.get(&c.token).await? else { continue };
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
                AfterPlugins::Keep(c) => Parsed::Event(c),
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

/// Resolves the batch's teams (one query for those not cached), reads the persons of its
/// distinct ids (one query per team), and plans the groups.
async fn plan_batch(parsed: &[Parsed], deps: &Deps<'_>) -> Result<Vec<Vec<usize>>, sqlx::Error> {
    let events = || parsed.iter().map(Parsed::event);
    let tokens: Vec<&str> = events().flatten().map(|c| c.token.as_str()).collect();
    deps.teams.load(&tokens).await?;
    let mut members = Vec::with_capacity(parsed.len());
    let mut ids: HashMap<i64, Vec<String>> = HashMap::new();
    for captured in events() {
        let member = match captured {
            Some(c) => deps.teams.get(&c.token).await?.map(|team| Member {
                team: team.id,
                distinct_id: c.distinct_id.clone(),
                merge_source: process::merge_source(c),
            }),
            None => None,
        };
        if let Some(m) = &member {
            let list = ids.entry(m.team).or_default();
            list.push(m.distinct_id.clone());
            list.extend(m.merge_source.clone());
        }
        members.push(member);
    }
    for list in ids.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    let person_of = deps.persons.prefetch(&ids).await?;
    Ok(plan(&members, |team, id| person_of.get(&(team, id.to_string())).copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(distinct_id: &str) -> Option<Member> {
        Some(Member { team: 1, distinct_id: distinct_id.into(), merge_source: None })
    }

    fn merge(distinct_id: &str, source: &str) -> Option<Member> {
        Some(Member { team: 1, distinct_id: distinct_id.into(), merge_source: Some(source.into()) })
    }

    #[test]
    fn one_group_per_distinct_id_in_offset_order() {
        let members = [m("a"), m("b"), m("a"), None, m("c"), m("b")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 2], vec![1, 5], vec![3], vec![4]]);
    }

    #[test]
    fn the_same_id_in_another_team_is_another_group() {
        let other = Some(Member { team: 2, distinct_id: "a".into(), merge_source: None });
        assert_eq!(plan(&[m("a"), other], |_, _| None), vec![vec![0], vec![1]]);
    }

    #[test]
    fn ids_merged_in_the_batch_share_a_group() {
        // anon's events before and after the identify must stay in order with user's.
        let members = [m("anon"), m("user"), merge("user", "anon"), m("anon"), m("other")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn ids_already_on_one_person_share_a_group() {
        let person = |_: i64, id: &str| match id {
            "anon" | "user" => Some(7),
            "other" => Some(8),
            _ => None,
        };
        let members = [m("anon"), m("other"), m("user"), m("new")];
        assert_eq!(plan(&members, person), vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn chains_of_merges_join_transitively() {
        let members = [merge("b", "a"), m("x"), merge("c", "b"), m("a"), m("c")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 2, 3, 4], vec![1]]);
    }
}
