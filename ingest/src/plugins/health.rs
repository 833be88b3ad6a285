//! How well each plugin configuration does: its recent calls and failures decide when it
//! becomes degraded, then disabled (with the reason stored for the operator), and a
//! disabled required plugin blocks its team's events rather than let them through
//! unprocessed.

use tracing::warn;

use super::{store, Plugins};

/// A plugin configuration's state, as `plugin_configs.status` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginState {
    Healthy,
    /// Failing often; it still runs.
    Degraded,
    /// Failing too often, or its worker kept dying: it no longer runs until an operator
    /// enables it again.
    Disabled,
}

impl PluginState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PluginState::Healthy => "healthy",
            PluginState::Degraded => "degraded",
            PluginState::Disabled => "disabled",
        }
    }

    /// Reads a stored status; anything unknown counts as healthy, as the column's default.
    pub(crate) fn parse(status: &str) -> PluginState {
        match status {
            "degraded" => PluginState::Degraded,
            "disabled" => PluginState::Disabled,
            _ => PluginState::Healthy,
        }
    }
}

/// When an instance's recent failures make it degraded, then disabled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthThresholds {
    pub degrade_after: u32,
    pub disable_after: u32,
    /// Share of recent calls that must have failed as well.
    pub failure_ratio: f64,
}

/// An instance's recent calls: counts halved whenever they pass the window (twice the
/// disable threshold), so old calls fade and the rate is of what it does now.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallHealth {
    calls: u64,
    failed: u64,
    degraded: bool,
}

impl CallHealth {
    /// Adds a batch's calls; says the state it crosses into, if any.
    pub(crate) fn record(&mut self, failed: u64, calls: u64, t: &HealthThresholds) -> Option<PluginState> {
        self.calls += calls.max(failed);
        self.failed += failed;
        let window = u64::from(t.disable_after).saturating_mul(2).max(2);
        while self.calls > window {
            self.calls = self.calls.div_ceil(2);
            self.failed /= 2;
        }
        // Within the window the count of failures can reach the threshold; once the
        // window is full, the rate speaks for the whole of it.
        let full = self.calls >= window;
        let failing = |n: u32| {
            let rate = self.failed as f64 / self.calls.max(1) as f64;
            rate >= t.failure_ratio && (self.failed >= u64::from(n) || (full && rate * window as f64 >= f64::from(n)))
        };
        if failed > 0 && failing(t.disable_after) {
            Some(PluginState::Disabled)
        } else if failed > 0 && !self.degraded && failing(t.degrade_after) {
            self.degraded = true;
            Some(PluginState::Degraded)
        } else {
            None
        }
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.failed, self.calls)
    }
}

impl Plugins {
    /// Failed calls among the recent ones degrade, then disable, an instance: judged on
    /// the rate, so a plugin that still succeeds now and then is not healthy for it.
    pub(super) async fn track_health(&self, id: i64, failed: Option<&(u32, String, &'static str)>, calls: usize) {
        let failed_calls = failed.map_or(0, |(k, _, _)| *k as u64);
        let (verdict, (recent_failed, recent_calls)) = {
            let mut failures = self.failures.lock().expect("failures lock");
            let health = failures.entry(id).or_default();
            (health.record(failed_calls, calls as u64, &self.thresholds), health.counts())
        };
        let (Some(state), Some((_, last, kind))) = (verdict, failed) else { return };
        let reason = format!("{recent_failed} of the last {recent_calls} calls failed; last: {last}");
        self.set_state(id, state, kind, &reason).await;
        if state == PluginState::Disabled {
            self.chains.write().expect("chains lock").values_mut().for_each(|c| c.retain(|l| l.id != id));
            self.export_chains.write().expect("chains lock").values_mut().for_each(|c| c.retain(|(l, _)| l.id != id));
        }
    }

    /// Records a new state: the metric, the log, Postgres, and a disabled required plugin
    /// blocking its team's events.
    /// `cause`: the kind of the last failure (`timeout`, `memory`, …) or of the strike
    /// (`watchdog`, `hang`, `crash`), for the metric's label.
    pub(super) async fn set_state(&self, id: i64, state: PluginState, cause: &'static str, reason: &str) {
        warn!(plugin_config = id, status = state.as_str(), cause, reason, "plugin state changed");
        crate::telemetry::plugin_state_changed(state.as_str(), cause);
        if state == PluginState::Disabled {
            let chains = self.chains.read().expect("chains lock");
            for (team, chain) in chains.iter() {
                if let Some(link) = chain.iter().find(|l| l.id == id && l.required) {
                    let why = format!("required plugin {} is disabled: {reason}", link.label);
                    self.blocked.write().expect("blocked lock").insert(*team, why);
                }
            }
        }
        if let Err(e) = store::set_state(&self.pool, id, state, reason).await {
            warn!(plugin_config = id, error = %e, "could not store the plugin's state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HealthThresholds = HealthThresholds { degrade_after: 10, disable_after: 100, failure_ratio: 0.5 };

    /// Batches of 100 calls with `failing` failures each, until a state or `batches`.
    fn run(failing: u64, batches: usize) -> Vec<&'static str> {
        let mut h = CallHealth::default();
        let mut seen = Vec::new();
        for _ in 0..batches {
            if let Some(state) = h.record(failing, 100, &T) {
                seen.push(state.as_str());
                if state == PluginState::Disabled {
                    break;
                }
            }
        }
        seen
    }

    #[test]
    fn health_is_judged_on_the_failure_rate() {
        assert_eq!(run(99, 5), vec!["degraded", "disabled"], "one success per batch does not keep it healthy");
        assert_eq!(run(100, 2), vec!["disabled"], "a whole batch failing");
        assert_eq!(run(1, 1_000), Vec::<&str>::new(), "a 1% failure rate is noise");
        assert_eq!(run(40, 1_000), Vec::<&str>::new(), "under the ratio");
        assert_eq!(run(60, 1_000), vec!["degraded", "disabled"]);
        let mut h = CallHealth::default();
        let states: Vec<_> = (0..20).filter_map(|_| h.record(1, 1, &T)).collect();
        assert_eq!(states, vec![PluginState::Degraded], "one call at a time: degraded after 10 failures");
    }
}
