//! `on_event`: written events handed to the teams' export plugins through a bounded queue,
//! in a worker pool of their own, so slow exports never hold up `process_event` or a
//! commit longer than the enqueue wait.

use serde_json::Value;
use sluice_plugin_runtime::{PluginConfigId, TeamId};
use std::time::Duration;
use tracing::{info, warn};

use super::{PluginLogs, PluginState, Plugins};

/// Written events of one team waiting for `on_event`.
pub(crate) type OnEventQueue = tokio::sync::mpsc::Receiver<(i64, Vec<Value>)>;

impl Plugins {
    /// Hands written events to the `on_event` exporters. Waits at most `wait` for room in
    /// the queue: exports never hold up the commit longer than that; what does not fit
    /// is counted.
    pub(crate) async fn enqueue_on_event(&self, team: i64, events: Vec<Value>, wait: Duration) {
        let n = events.len();
        if let Err(e) = self.on_event_queue.send_timeout((team, events), wait).await {
            warn!(team, events = n, error = %e, "on_event queue full; these events are not exported");
            crate::telemetry::on_event_dropped(n);
        }
    }

    /// Runs `on_event` for one team's written events.
    async fn export(&self, team: i64, events: Vec<Value>, ch: &crate::write::ClickHouse) {
        let chain = self.on_event_chains.read().expect("chains lock").get(&team).cloned().unwrap_or_default();
        if chain.is_empty() {
            return;
        }
        let ids: Vec<PluginConfigId> = chain.iter().map(|l| PluginConfigId(l.id)).collect();
        let started = std::time::Instant::now();
        let outcome = self.exports.on_event(TeamId(team), &ids, events, self.on_event_attempts).await;
        crate::telemetry::step("on_event", started.elapsed().as_secs_f64());
        let mut logs = PluginLogs::new(team, ch.flavor);
        for (id, _, error) in &outcome.output.errors {
            crate::telemetry::plugin_error(id.0, "on_event", error.kind());
            warn!(plugin_config = id.0, team, error = %error, "on_event failed");
            logs.push(id.0, "error", &error.to_string());
        }
        for (id, entry) in &outcome.output.logs {
            info!(plugin_config = id.0, team, level = %entry.level, "{}", entry.message);
            logs.push(id.0, &entry.level, &entry.message);
        }
        for strike in &outcome.strikes {
            crate::telemetry::plugin_error(strike.id.0, strike.hook.name(), strike.cause);
            logs.push(strike.id.0, "error", &strike.reason);
            if strike.disabled {
                let reason = format!("its export worker kept dying: {}", strike.reason);
                self.set_state(strike.id.0, PluginState::Disabled, strike.cause, &reason).await;
            }
        }
        logs.write(ch, "on-event").await;
    }
}

/// Runs queued `on_event` work until `stopping`; then hands over what is queued until
/// its drain deadline and counts the rest as dropped.
pub(crate) fn spawn_on_event(
    plugins: std::sync::Arc<Plugins>,
    mut queue: OnEventQueue,
    ch: std::sync::Arc<crate::write::ClickHouse>,
    stopping: crate::stopping::Stopping,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Resolves at the deadline once stopping has begun; an export in flight then is
        // cut like a queued one.
        let cut = stopping.deadline_passed();
        tokio::pin!(cut);
        let mut handed = 0;
        loop {
            let next = if stopping.is_cancelled() {
                queue.try_recv().ok()
            } else {
                tokio::select! {
                    next = queue.recv() => match next {
                        Some(work) => Some(work),
                        None => return,
                    },
                    _ = stopping.cancelled() => continue,
                }
            };
            let Some((team, events)) = next else { break };
            let n = events.len();
            tokio::select! {
                _ = plugins.export(team, events, &ch) => {
                    if stopping.is_cancelled() {
                        handed += n;
                    }
                }
                _ = &mut cut => {
                    let mut left = n;
                    while let Ok((_, events)) = queue.try_recv() {
                        left += events.len();
                    }
                    crate::telemetry::on_event_dropped(left);
                    warn!(events = left, "shutdown deadline: these written events were not exported");
                    return;
                }
            }
        }
        info!(events = handed, "queued on_event exports handed over before stopping");
    })
}

/// A written event row as `on_event` receives it: properties as objects, not text.
pub(crate) fn on_event_payload(row: &Value) -> Value {
    let mut event = row.clone();
    for key in ["properties", "person_properties"] {
        if let Some(text) = event.get(key).and_then(Value::as_str) {
            event[key] = serde_json::from_str(text).unwrap_or(Value::Null);
        }
    }
    event
}
