//! `process_event`: a team's chain over a batch's events, one round trip to the team's
//! worker process per batch. Failures never stop events: an event continues with the last
//! good version and says which plugins succeeded and failed (`$plugins_succeeded`,
//! `$plugins_failed`), unless a required plugin did not process it.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sluice_plugin_runtime::{PluginConfigId, TeamId};
use sluice_schema::clickhouse::Flavor;
use sluice_schema::CapturedEvent;
use tracing::{info, warn};

use super::{event, PluginLogs, PluginState, Plugins};

/// What became of one event in its team's chain.
pub(crate) enum AfterPlugins {
    /// The message's fields as the chain left them, and its data, parsed.
    Keep(CapturedEvent, Map<String, Value>),
    /// A plugin dropped it.
    Dropped,
    /// A required plugin did not process it: dead-lettered with this reason.
    Dead(String),
}

/// What the chain did to a batch's events of one team.
pub(crate) struct Applied {
    /// Per event, in order.
    pub events: Vec<AfterPlugins>,
    /// Rows for ClickHouse `plugin_log_entries`.
    pub logs: Vec<crate::rows::Encoded>,
}

impl Plugins {
    /// Runs the team's chain over `events` (all of `team`).
    pub(crate) async fn apply(&self, team: i64, events: Vec<CapturedEvent>, flavor: Flavor) -> Applied {
        if let Some(reason) = self.blocked.read().expect("blocked lock").get(&team).cloned() {
            return Applied {
                events: events.iter().map(|_| AfterPlugins::Dead(reason.clone())).collect(),
                logs: Vec::new(),
            };
        }
        let chain = self.chains.read().expect("chains lock").get(&team).cloned().unwrap_or_default();
        let (inputs, rests): (Vec<Value>, Vec<Map<String, Value>>) =
            events.iter().map(|e| event::to_plugin_event(e, team)).unzip();
        let started = std::time::Instant::now();
        let ids: Vec<PluginConfigId> = chain.iter().map(|l| PluginConfigId(l.id)).collect();
        let outcome = self.supervisor.process(TeamId(team), &ids, inputs).await;
        crate::telemetry::step("plugins", started);
        let label = |id: i64| chain.iter().find(|l| l.id == id).map_or_else(|| id.to_string(), |l| l.label.clone());
        let mut logs = PluginLogs::new(team, flavor);

        for link in &chain {
            crate::telemetry::plugin_calls(link.id, events.len());
        }
        for (id, seconds) in &outcome.output.durations {
            crate::telemetry::plugin_duration(id.0, *seconds);
        }
        let mut failed_now: HashMap<i64, (u32, String, &'static str)> = HashMap::new();
        for (id, _, error) in &outcome.output.errors {
            crate::telemetry::plugin_error(id.0, "process_event", error.kind());
            let entry = failed_now.entry(id.0).or_insert((0, String::new(), ""));
            entry.0 += 1;
            entry.1 = error.to_string();
            entry.2 = error.kind();
            warn!(plugin = %label(id.0), team, error = %error, "plugin call failed");
            logs.push(id.0, "error", &error.to_string());
        }
        for (id, entry) in &outcome.output.logs {
            info!(plugin = %label(id.0), team, level = %entry.level, "{}", entry.message);
            logs.push(id.0, &entry.level, &entry.message);
        }
        for strike in &outcome.strikes {
            crate::telemetry::plugin_error(strike.id.0, strike.hook.name(), strike.cause);
            logs.push(strike.id.0, "error", &strike.reason);
            if strike.disabled {
                let reason = format!("its worker kept dying: {}", strike.reason);
                self.set_state(strike.id.0, PluginState::Disabled, strike.cause, &reason).await;
            }
        }
        for link in &chain {
            self.track_health(link.id, failed_now.get(&link.id), events.len()).await;
        }

        let errors = &outcome.output.errors;
        let events = events
            .into_iter()
            .zip(outcome.output.events)
            .zip(rests)
            .enumerate()
            .map(|(i, ((mut captured, processed), rest))| {
                let missed = chain.iter().find(|l| l.required && processed.failed.contains(&PluginConfigId(l.id)));
                if let Some(link) = missed {
                    let why = errors
                        .iter()
                        .find(|(id, at, _)| id.0 == link.id && *at == i)
                        .map_or_else(|| "it could not run".to_string(), |(_, _, e)| e.to_string());
                    return AfterPlugins::Dead(format!("required plugin {} did not process it: {why}", link.label));
                }
                let Some(event) = processed.event else { return AfterPlugins::Dropped };
                let succeeded: Vec<String> = processed.succeeded.iter().map(|id| label(id.0)).collect();
                let failed: Vec<String> = processed.failed.iter().map(|id| label(id.0)).collect();
                let data = event::from_plugin_event(&mut captured, rest, event, &succeeded, &failed);
                AfterPlugins::Keep(captured, data)
            })
            .collect();
        Applied { events, logs: logs.into_rows() }
    }
}
