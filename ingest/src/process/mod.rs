//! The per-event steps, in order, for one captured message.
//!
//! Steps 1 (the client's data; the outer message is parsed by the batch), 2 resolve team,
//! 3 restrictions, 4 person-processing flag, 6 normalize, 7 timestamp, 8 persons,
//! 9 groups, 10 anonymize ip, 11 row. Step 5, plugins, runs over the whole batch before
//! these, and `on_event` (12) after its rows are written (see [`crate::batch`]).
//! Personless events carry the deterministic person uuid a later person will share.

use serde_json::{json, Map, Value};
use sluice_schema::clickhouse::Flavor;
use sluice_schema::{person_uuid, CapturedEvent};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::dlq::DeadLetter;
use crate::normalize;
use crate::persons::PersonEvent;
use crate::resolve::Team;
use crate::restrict::Restrictions;
use crate::rows::{DistinctIdRow, Encoded, EventRow, GroupRow, PersonRow, WarningRow};
use crate::stores::{Postgres, Stores};
use crate::{elements, telemetry, timestamp};

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    Row {
        /// The `events` row.
        event: Encoded,
        team_id: i64,
        rows: SideRows,
        warnings: Vec<Encoded>,
        captured_at: OffsetDateTime,
    },
    /// Dropped on purpose, counted with this cause; the warnings still get written.
    Drop {
        cause: &'static str,
        warnings: Vec<Encoded>,
    },
    Dead(DeadLetter),
}

/// Person, distinct-id and group rows an event produced, for ClickHouse.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SideRows {
    pub persons: Vec<Encoded>,
    pub distinct_ids: Vec<Encoded>,
    pub groups: Vec<Encoded>,
}

/// What the steps need from outside.
pub(crate) struct Deps<'a, S = Postgres> {
    pub stores: &'a S,
    pub restrictions: &'a Restrictions,
    pub plugins: Option<&'a crate::plugins::Plugins>,
    pub flavor: Flavor,
}

/// A dependency could not answer: the batch is retried, nothing is dropped.
#[derive(Debug, thiserror::Error)]
#[error("postgres unavailable: {0}")]
pub(crate) struct DependencyDown(#[from] pub sqlx::Error);

fn dead(stage: &'static str, error_class: &'static str, error: impl ToString, team_id: Option<i64>) -> Fate {
    Fate::Dead(DeadLetter { stage, error: error.to_string(), error_class, team_id })
}

/// Step 1, the outer message: read once per message, by the batch plan and then the steps.
pub(crate) fn parse_message(payload: &[u8]) -> Result<CapturedEvent, DeadLetter> {
    let dead = |error_class, error: String| DeadLetter { stage: "parse", error, error_class, team_id: None };
    let captured: CapturedEvent =
        serde_json::from_slice(payload).map_err(|e| dead("invalid_message", e.to_string()))?;
    if captured.event.is_empty() || captured.distinct_id.trim().is_empty() {
        return Err(dead("missing_field", "event name or distinct_id is empty".into()));
    }
    Ok(captured)
}

/// An event through steps 1–7 (no person touched yet): what steps 8–11 need.
#[derive(Debug)]
pub(crate) struct Ready {
    captured: CapturedEvent,
    team: Team,
    personless: bool,
    properties: Map<String, Value>,
    resolved: timestamp::Resolved,
    warnings: Vec<Encoded>,
}

impl Ready {
    /// What the person step reads; `None` for a personless event.
    pub(crate) fn person_event(&self) -> Option<PersonEvent<'_>> {
        (!self.personless).then(|| PersonEvent {
            team_id: self.team.id,
            event: &self.captured.event,
            distinct_id: &self.captured.distinct_id,
            properties: &self.properties,
            timestamp: self.resolved.timestamp,
        })
    }

    pub(crate) fn team_id(&self) -> i64 {
        self.team.id
    }

    pub(crate) fn distinct_id(&self) -> &str {
        &self.captured.distinct_id
    }
}

/// Steps 1–7, or the event's fate if one of them decides it.
pub(crate) enum Prepared {
    Ready(Box<Ready>),
    Done(Fate),
}

/// Steps 1–11 for one event.
#[cfg(test)]
pub(crate) async fn process<S: Stores>(captured: CapturedEvent, deps: &Deps<'_, S>) -> Result<Fate, DependencyDown> {
    match prepare(captured, None, deps).await? {
        Prepared::Ready(ready) => finish(*ready, deps).await,
        Prepared::Done(fate) => Ok(fate),
    }
}

/// Steps 1–7: everything before the first write, so that a batch can see what its events
/// will ask of persons before any of them runs (see `crate::batch`).
/// `data`: the client's data already parsed (by the plugin step), else read from the
/// message.
pub(crate) async fn prepare<S: Stores>(
    mut captured: CapturedEvent,
    data: Option<Map<String, Value>>,
    deps: &Deps<'_, S>,
) -> Result<Prepared, DependencyDown> {
    let done = |fate| Ok(Prepared::Done(fate));
    let flavor = deps.flavor;
    // 1. Parse the client's event in `data` (the outer message is [`parse_message`]'s).
    let parsed = match data {
        Some(d) => Ok(Value::Object(d)),
        None => serde_json::from_str(&captured.data),
    };
    let mut data: Map<String, Value> = match parsed {
        Ok(Value::Object(d)) => d,
        Ok(_) => return done(dead("parse", "invalid_data", "data is not a JSON object", None)),
        Err(e) => return done(dead("parse", "invalid_data", e, None)),
    };
    // The whole batch waits prepared for its persons: its text is not kept beside its tree.
    captured.data = String::new();

    // 2. Team.
    let team = deps.stores.team(&captured.token).await?;
    let Some(team) = team else {
        return done(Fate::Drop { cause: "invalid_token", warnings: Vec::new() });
    };

    // 3. Restrictions.
    if deps.restrictions.drops(&captured.token, &captured.distinct_id) {
        return done(Fate::Drop { cause: "restricted", warnings: Vec::new() });
    }

    // 4. Person processing.
    let props_in = data.get("properties");
    let personless = team.person_processing_opt_out
        || deps.restrictions.skips_persons(&captured.token, &captured.distinct_id)
        || props_in.and_then(|p| p.get("$process_person_profile")) == Some(&Value::Bool(false));
    let person_event =
        matches!(captured.event.as_str(), "$identify" | "$create_alias" | "$merge_dangerously" | "$groupidentify");
    let mut warnings = Vec::new();
    if personless && person_event {
        warnings.push(warning(
            team.id,
            "personless_person_event",
            json!({"event": captured.event, "uuid": captured.uuid}),
            flavor,
            captured.now,
        ));
        return done(Fate::Drop { cause: "personless_person_event", warnings });
    }

    // 6. Normalize.
    let sent_at_text = captured.sent_at.map(|t| t.format(&Rfc3339).expect("UTC times format"));
    let properties = normalize::properties(
        &mut data,
        &normalize::Context {
            ip: Some(captured.ip.as_str()).filter(|ip| !ip.is_empty()),
            sent_at: sent_at_text.as_deref(),
        },
    );

    // 7. Timestamp.
    let resolved = timestamp::resolve(timestamp::Inputs {
        now: captured.now,
        sent_at: captured.sent_at,
        timestamp: captured.timestamp.as_deref(),
        offset_ms: data.get("offset").and_then(Value::as_f64),
        ignore_sent_at: properties.get("$ignore_sent_at") == Some(&Value::Bool(true)),
    });
    if resolved.clamped_from_future {
        warnings.push(warning(
            team.id,
            "event_timestamp_in_future",
            json!({"event": captured.event, "uuid": captured.uuid, "timestamp": captured.timestamp}),
            flavor,
            captured.now,
        ));
    }
    Ok(Prepared::Ready(Box::new(Ready { captured, team, personless, properties, resolved, warnings })))
}

/// Steps 8–11, in the order of the event's group (see `crate::batch`).
pub(crate) async fn finish<S: Stores>(ready: Ready, deps: &Deps<'_, S>) -> Result<Fate, DependencyDown> {
    let flavor = deps.flavor;
    let Ready { captured, team, personless, mut properties, resolved, mut warnings } = ready;

    // 8. Persons.
    let mut rows = SideRows::default();
    let person = if personless {
        None
    } else {
        let (person, changes) = deps
            .stores
            .person(&PersonEvent {
                team_id: team.id,
                event: &captured.event,
                distinct_id: &captured.distinct_id,
                properties: &properties,
                timestamp: resolved.timestamp,
            })
            .await?;
        telemetry::person_writes("person_rows", changes.persons.len());
        telemetry::person_writes("distinct_id_rows", changes.distinct_ids.len());
        telemetry::person_writes("merges", changes.persons.iter().filter(|(_, deleted)| *deleted).count());
        for (p, deleted) in &changes.persons {
            let row = PersonRow {
                id: p.uuid,
                team_id: team.id,
                properties: &p.properties,
                is_identified: p.is_identified,
                created_at: p.created_at,
                version: p.version,
                is_deleted: *deleted,
            };
            rows.persons.push(row.encode(flavor));
        }
        for (distinct_id, person_id, version) in &changes.distinct_ids {
            let row = DistinctIdRow { team_id: team.id, distinct_id, person_id: *person_id, version: *version };
            rows.distinct_ids.push(row.encode(flavor));
        }
        for (kind, details) in changes.warnings {
            warnings.push(warning(team.id, kind, details, flavor, captured.now));
        }
        Some(person)
    };

    // 9. Groups.
    let mut group_columns: [String; 5] = Default::default();
    if let Some(Value::Object(groups)) = properties.get("$groups").cloned() {
        for (group_type, key) in groups {
            let Some(key) = group_key(&key) else { continue };
            if let Some(i) = deps.stores.group_type_index(team.id, &group_type).await? {
                properties.insert(format!("$group_{i}"), Value::String(key.clone()));
                group_columns[i as usize] = key;
            }
        }
    }
    if captured.event == "$groupidentify" {
        let group_type = properties.get("$group_type").and_then(Value::as_str).map(str::to_string);
        let key = properties.get("$group_key").and_then(group_key);
        let set = properties.get("$group_set").and_then(Value::as_object).cloned().unwrap_or_default();
        if let (Some(group_type), Some(key)) = (group_type, key) {
            if let Some(i) = deps.stores.group_type_index(team.id, &group_type).await? {
                if let Some(g) = deps.stores.upsert_group(team.id, i, &key, &set, resolved.timestamp).await? {
                    let row = GroupRow {
                        team_id: team.id,
                        type_index: g.type_index,
                        key: &g.key,
                        properties: &g.properties,
                        created_at: g.created_at,
                        version: g.version,
                    };
                    rows.groups.push(row.encode(flavor));
                }
            }
        }
    }

    // 10. Anonymize ip, after plugins (which may need it).
    if team.anonymize_ips {
        properties.remove("$ip");
    }

    // 11. The row.
    let elements_chain = elements::take_chain(&mut properties);
    let (person_id, person_properties, person_created_at, person_mode) = match person {
        Some(p) => (p.uuid, p.properties, p.created_at, "full"),
        None => (person_uuid(team.id, &captured.distinct_id), Default::default(), resolved.timestamp, "propertyless"),
    };
    let event = EventRow {
        uuid: captured.uuid,
        person_id,
        person_properties,
        person_created_at,
        person_mode,
        event: captured.event,
        properties,
        timestamp: resolved.timestamp,
        team_id: team.id,
        distinct_id: captured.distinct_id,
        elements_chain,
        created_at: OffsetDateTime::now_utc(),
        captured_at: captured.now,
        groups: group_columns,
    }
    .encode(flavor);
    Ok(Fate::Row { event, team_id: team.id, rows, warnings, captured_at: captured.now })
}

/// Group keys are strings; SDKs sometimes send numbers.
fn group_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn warning(team_id: i64, kind: &str, details: Value, flavor: Flavor, at: OffsetDateTime) -> Encoded {
    WarningRow { team_id, kind, details, timestamp: at }.encode(flavor)
}

#[cfg(test)]
mod tests;
