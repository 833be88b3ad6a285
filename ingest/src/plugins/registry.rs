//! Which plugin configurations run: loaded from Postgres, reloaded when their
//! `updated_at` moves (the new version is set up in the workers and swapped in only if
//! its `setup` succeeds), and arranged into each team's chains.

use std::collections::{HashMap, HashSet};

use sluice_plugin_runtime::{Hook, Instance, PluginConfigId, TeamId};
use tracing::{info, warn};

use super::{store, Link, PluginState, Plugins, Version};

impl Plugins {
    /// `(team, instance, hook)` of every schedule hook of the running, enabled instances.
    pub(crate) fn scheduled(&self) -> Vec<(i64, i64, Hook)> {
        let live: HashSet<i64> = self
            .chains
            .read()
            .expect("chains lock")
            .values()
            .flatten()
            .map(|l| l.id)
            .chain(self.export_chains.read().expect("chains lock").values().flatten().map(|(l, _)| l.id))
            .collect();
        let loaded = self.loaded.lock().expect("loaded lock");
        let mut out = Vec::new();
        for (id, v) in loaded.iter().filter(|(_, v)| v.running) {
            for hook in v.hooks.iter().filter(|h| h.is_schedule()) {
                if live.contains(id) || self.scheduled_only.read().expect("lock").contains(id) {
                    out.push((v.team, *id, *hook));
                }
            }
        }
        out
    }

    /// Loads what changed since the last call and rebuilds the chains.
    pub(crate) async fn refresh(&self) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        let rows = store::configs(&self.pool).await?;
        let mut chains: HashMap<i64, Vec<Link>> = HashMap::new();
        let mut export_chains: HashMap<i64, Vec<(Link, Hook)>> = HashMap::new();
        let mut scheduled_only = HashSet::new();
        let mut blocked: HashMap<i64, String> = HashMap::new();
        for row in rows {
            let label = format!("{} ({})", row.manifest.name, row.id);
            let required = row.manifest.required;
            let disabled = row.state() == PluginState::Disabled;
            if row.enabled && required && disabled {
                blocked.insert(row.team_id, format!("required plugin {label} is disabled"));
            }
            if !row.enabled || disabled {
                continue;
            }
            let attempted = self.loaded.lock().expect("loaded lock").get(&row.id).map(|l| l.attempted);
            if attempted != Some(row.updated_at) {
                let instance = Instance {
                    id: PluginConfigId(row.id),
                    source: sluice_plugin_runtime::PluginSource { manifest: row.manifest.0.clone(), main: row.source },
                    config: row.config.0,
                    limits: self.limits.clone(),
                    attachments: store::attachments(&self.pool, row.id).await?,
                };
                let result = self.load(TeamId(row.team_id), instance).await;
                let mut loaded = self.loaded.lock().expect("loaded lock");
                let entry = loaded.entry(row.id).or_insert(Version {
                    attempted: row.updated_at,
                    running: false,
                    hooks: Vec::new(),
                    team: row.team_id,
                });
                entry.attempted = row.updated_at;
                match result {
                    Ok(hooks) => {
                        let names: Vec<&str> = hooks.iter().map(|h| h.name()).collect();
                        info!(plugin_config = row.id, team = row.team_id, plugin = %row.manifest.name, hooks = ?names, "plugin loaded");
                        entry.running = true;
                        entry.hooks = hooks;
                        self.failures.lock().expect("failures lock").remove(&row.id);
                    }
                    Err(e) => {
                        // The version loaded before (if any) keeps running; this one is
                        // not tried again until the configuration changes.
                        warn!(plugin_config = row.id, error = %e, "plugin did not load; keeping what ran before");
                        crate::telemetry::plugin_error(row.id, "setup", e.kind());
                    }
                }
            }
            let Some(hooks) =
                self.loaded.lock().expect("loaded lock").get(&row.id).filter(|l| l.running).map(|l| l.hooks.clone())
            else {
                if required {
                    blocked.insert(row.team_id, format!("required plugin {label} did not load"));
                }
                continue;
            };
            let link = Link { id: row.id, label, required };
            if hooks.contains(&Hook::ProcessEvent) {
                chains.entry(row.team_id).or_default().push(link.clone());
            }
            for hook in hooks.iter().filter(|h| h.is_export()) {
                export_chains.entry(row.team_id).or_default().push((link.clone(), *hook));
            }
            if !hooks.iter().any(|h| *h == Hook::ProcessEvent || h.is_export()) {
                scheduled_only.insert(row.id);
            }
        }
        *self.scheduled_only.write().expect("lock") = scheduled_only;
        *self.blocked.write().expect("blocked lock") = blocked;
        *self.chains.write().expect("chains lock") = chains;
        *self.export_chains.write().expect("chains lock") = export_chains;
        self.read_once.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Sets an instance up in the worker pools of this process's role: an event lane
    /// runs `process_event` in one pool and schedules in the other; the exports lane
    /// runs only the export hooks, in its own.
    async fn load(&self, team: TeamId, instance: Instance) -> Result<Vec<Hook>, sluice_plugin_runtime::PluginError> {
        match self.role {
            super::Role::Exports => {
                let id = instance.id;
                let hooks = self.exports.load(team, instance).await?;
                if !hooks.iter().any(|h| h.is_export()) {
                    // Nothing for this lane to run: its VM need not stay.
                    self.exports.unload(team, id).await;
                }
                Ok(hooks)
            }
            super::Role::Events => {
                let hooks = self.supervisor.load(team, instance.clone()).await?;
                if hooks.iter().any(|h| h.is_schedule() || *h == Hook::Jobs) {
                    self.exports.load(team, instance).await?;
                }
                Ok(hooks)
            }
        }
    }
}
