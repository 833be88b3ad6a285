//! The operator commands `sluice-ingest` takes besides `run`, as clap subcommands.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the lane's topic and write rows (the default).
    Run,
    /// Apply the Postgres migrations and the ClickHouse DDL.
    Migrate,
    /// Manage teams.
    Teams {
        #[command(subcommand)]
        command: TeamsCommand,
    },
    /// Inspect and replay the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Install and manage teams' plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Serve plugin VMs to this binary's supervisor over stdin/stdout (started by
    /// `run`, not by hand).
    #[command(hide = true)]
    PluginWorker,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Install a plugin folder (plugin.json, main.lua) for a team, or update the team's
    /// instance of a plugin of the same name.
    Install {
        /// The plugin's folder.
        dir: std::path::PathBuf,
        /// The team id.
        #[arg(long)]
        team: i64,
        /// A setting, repeated: key=value.
        #[arg(long = "config", value_parser = sluice_common::settings::key_value)]
        config: Vec<(String, String)>,
        /// Position in the team's chain (lower runs first).
        #[arg(long)]
        order: Option<i32>,
    },
    /// List plugin configs with their team, order, state and configuration (secrets masked).
    List {
        #[arg(long)]
        team: Option<i64>,
    },
    /// Enable a plugin config (and clear a disabled state).
    Enable { id: i64 },
    /// Disable a plugin config.
    Disable { id: i64 },
    /// Change settings of a plugin config: key=value, repeated.
    Configure {
        id: i64,
        #[arg(long = "config", value_parser = sluice_common::settings::key_value)]
        config: Vec<(String, String)>,
    },
    /// Show a plugin config's latest log lines.
    Logs {
        id: i64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead letters with their stage and error.
    List {
        /// Only those that failed since: RFC 3339, or a duration back (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only those of this team id.
        #[arg(long)]
        team: Option<i64>,
    },
    /// Publish dead letters again, unchanged, to the topic they came from.
    Replay {
        /// Only those that failed since: RFC 3339, or a duration back (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only those of this team id.
        #[arg(long)]
        team: Option<i64>,
        /// Publish to this topic instead of the one each came from.
        #[arg(long)]
        to: Option<String>,
        /// Say what would be replayed, publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// Create a team and print its api token.
    Create {
        /// The team's name.
        #[arg(long)]
        name: String,
    },
    /// List teams with their tokens.
    List,
    /// Change what the browser SDK is told when it loads (capture's
    /// `/array/<token>/config`); only the settings given change. Capture picks the
    /// change up within SDK_CONFIG_REFRESH_INTERVAL_MS.
    Configure {
        /// The team's api token.
        #[arg(long)]
        token: String,
        /// Record sessions (true/false).
        #[arg(long)]
        session_recording: Option<bool>,
        /// Share of sessions recorded, 0 to 1 (1: all).
        #[arg(long)]
        recording_sample_rate: Option<f64>,
        /// Sessions shorter than this many milliseconds are not kept (0: all).
        #[arg(long)]
        recording_minimum_duration_ms: Option<i32>,
        /// Console logs in recordings (true/false).
        #[arg(long)]
        console_logs: Option<bool>,
        /// Autocapture of clicks, changes and submits (true/false).
        #[arg(long)]
        autocapture: Option<bool>,
        /// Heatmap data (true/false).
        #[arg(long)]
        heatmaps: Option<bool>,
        /// Exception autocapture (true/false).
        #[arg(long)]
        exception_autocapture: Option<bool>,
        /// Autocapture elements sent as the chain string (true) or as the older
        /// `$elements` list (false), which ingest converts.
        #[arg(long)]
        elements_chain_as_string: Option<bool>,
    },
}
