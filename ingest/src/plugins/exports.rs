//! One delivery of written events to one export plugin, for the exports lane: a buffer
//! to `export_events`, or events one by one to `on_event`. What came of each event is
//! read here (delivered, to be retried, given up on); the lane decides what to do next.

use serde_json::Value;
use sluice_plugin_runtime::{Hook, PluginConfigId, PluginError, TeamId};
use tracing::{info, warn};

use super::{PluginLogs, PluginState, Plugins};

/// What became of one event of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivered {
    Done,
    /// The plugin asked to be called again (`ctx.retry`), ran out of time, or its worker
    /// died: worth another attempt after a back-off.
    Retry(String),
    /// The plugin refused it (an error that is not a retry), or it cannot run.
    GaveUp(String),
}

/// Whether a failed call is worth another attempt: the plugin asked for it, or the
/// destination may merely have been slow.
fn verdict(error: &PluginError) -> Delivered {
    match error {
        PluginError::Retry(_) | PluginError::Timeout { .. } => Delivered::Retry(error.to_string()),
        _ => Delivered::GaveUp(error.to_string()),
    }
}

impl Plugins {
    /// Calls plugin config `id`'s export `hook` for `events` (JSON text each, as the
    /// exports topic carries them): one answer per event, in order. Logs, errors and
    /// strikes are recorded as for every other hook.
    pub(crate) async fn deliver(
        &self,
        team: i64,
        id: i64,
        hook: Hook,
        events: Vec<String>,
        ch: &crate::write::ClickHouse,
    ) -> Vec<Delivered> {
        let n = events.len();
        let pid = PluginConfigId(id);
        if self.exports.is_disabled(pid) || !self.exporters(team).contains(&(id, hook)) {
            let why = format!("plugin config {id} no longer runs {} for team {team}", hook.name());
            return vec![Delivered::GaveUp(why); n];
        }
        let started = std::time::Instant::now();
        let mut logs = PluginLogs::new(team, ch.flavor);
        let (answers, strikes) = match hook {
            Hook::ExportEvents => {
                let run = self.exports.export_events(TeamId(team), pid, events).await;
                logs.extend(id, &run.logs);
                let mut answer = match (&run.result, &run.strike) {
                    (_, Some(s)) => Delivered::Retry(s.reason.clone()),
                    (Ok(()), None) => Delivered::Done,
                    (Err(e), None) => {
                        self.record_error(team, id, hook, e, &mut logs);
                        verdict(e)
                    }
                };
                if let Err(e) = self.send_captured(team, id, run.captured).await {
                    // The call's captures are not in Kafka: it is made again.
                    answer = Delivered::Retry(format!("events it captured were not sent: {e}"));
                }
                (vec![answer; n], run.strike.into_iter().collect())
            }
            _ => {
                let values: Vec<Value> =
                    events.iter().map(|t| serde_json::from_str(t).unwrap_or(Value::Null)).collect();
                let run = self.exports.on_event(TeamId(team), &[pid], values).await;
                let mut answers = vec![Delivered::Done; n];
                for (i, event) in run.output.events.iter().enumerate().take(n) {
                    if event.failed.contains(&pid) {
                        answers[i] = Delivered::Retry("its worker failed during the call".into());
                    }
                }
                for (_, i, e) in &run.output.errors {
                    self.record_error(team, id, hook, e, &mut logs);
                    if let Some(a) = answers.get_mut(*i) {
                        *a = verdict(e);
                    }
                }
                for (_, entry) in &run.output.logs {
                    logs.extend(id, std::slice::from_ref(entry));
                }
                let captured = run.output.captured.into_iter().map(|(_, e)| e).collect();
                if let Err(e) = self.send_captured(team, id, captured).await {
                    // Which event's call captured what is not kept: all are made again.
                    let why = format!("events it captured were not sent: {e}");
                    answers.iter_mut().for_each(|a| *a = Delivered::Retry(why.clone()));
                }
                (answers, run.strikes)
            }
        };
        crate::telemetry::step(hook.name(), started);
        for strike in &strikes {
            crate::telemetry::plugin_error(strike.id.0, strike.hook.name(), strike.cause);
            logs.push(strike.id.0, "error", &strike.reason);
            if strike.disabled {
                let reason = format!("its export worker kept dying: {}", strike.reason);
                self.set_state(strike.id.0, PluginState::Disabled, strike.cause, &reason).await;
            }
        }
        logs.write(ch, "exports").await;
        answers
    }

    fn record_error(&self, team: i64, id: i64, hook: Hook, error: &PluginError, logs: &mut PluginLogs) {
        crate::telemetry::plugin_error(id, hook.name(), error.kind());
        warn!(plugin_config = id, team, hook = hook.name(), error = %error, "export call failed");
        logs.push(id, "error", &error.to_string());
    }
}

impl PluginLogs {
    pub(super) fn extend(&mut self, id: i64, lines: &[sluice_plugin_runtime::LogEntry]) {
        for entry in lines {
            info!(plugin_config = id, team = self.team, level = %entry.level, "{}", entry.message);
            self.push(id, &entry.level, &entry.message);
        }
    }
}

/// A written event row as export plugins receive it: properties as objects, not text.
pub(crate) fn on_event_payload(row: &Value) -> Value {
    let mut event = row.clone();
    for key in ["properties", "person_properties"] {
        if let Some(text) = event.get(key).and_then(Value::as_str) {
            event[key] = serde_json::from_str(text).unwrap_or(Value::Null);
        }
    }
    event
}
