//! The operator commands `sluice-ingest` takes besides `run`, as clap subcommands.

use clap::Subcommand;

use super::Cli;

/// The connection settings (by their `--help` heading) each operator command uses; its
/// help shows those and hides the others. A new command says here what it reaches.
fn connections(command: &str) -> &'static [&'static str] {
    match command {
        "migrate" => &["Postgres", "ClickHouse"],
        "teams" => &["Postgres"],
        "dlq" => &["Kafka"],
        "plugins" => &["Postgres", "Redis", "ClickHouse"],
        _ => &["Kafka", "Postgres", "Redis", "ClickHouse"],
    }
}

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
    /// Upload a file for a plugin config, read by the plugin as ctx.attachments.<key>
    /// (replacing one of the same key); running ingest processes reload the plugin.
    Attach {
        id: i64,
        /// Its name in ctx.attachments: letters, digits and _.
        key: String,
        file: std::path::PathBuf,
        /// The content type; told from the file's extension (or contents) if not given.
        #[arg(long)]
        content_type: Option<String>,
        /// The largest file taken.
        #[arg(long, env = "PLUGIN_ATTACHMENT_MAX_BYTES", default_value_t = sluice_plugin_runtime::ATTACHMENT_MAX_BYTES)]
        max_bytes: u64,
    },
    /// Remove a plugin config's attachment.
    Detach { id: i64, key: String },
    /// List plugin jobs that are pending or failed (with their error), newest first.
    Jobs {
        /// Only this plugin config's.
        #[arg(long)]
        plugin_config: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Run a failed job again (its attempts start over).
    RetryJob { job: i64 },
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
        /// The exports dead-letter topic (what export plugins gave up on) instead.
        #[arg(long)]
        exports: bool,
        /// Only those this plugin config gave up on (with --exports).
        #[arg(long, requires = "exports")]
        plugin_config: Option<i64>,
    },
    /// Publish dead letters again, unchanged, to the topic they came from; with
    /// --exports, to the exports topic for the plugin that gave up on each alone.
    Replay {
        /// Only those that failed since: RFC 3339, or a duration back (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only those of this team id.
        #[arg(long)]
        team: Option<i64>,
        /// The exports dead-letter topic (what export plugins gave up on) instead.
        #[arg(long)]
        exports: bool,
        /// Only those this plugin config gave up on (with --exports).
        #[arg(long, requires = "exports")]
        plugin_config: Option<i64>,
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

impl Cli {
    /// The command line as `sluice-ingest` parses it: the daemon's settings belong to it
    /// alone, and each operator command shows its own flags and the connection settings
    /// it uses ([`connections`]), the others hidden though still read.
    pub fn command_line() -> clap::Command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let globals: Vec<clap::Arg> = cmd.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
        for sub in cmd.get_subcommands_mut() {
            let uses = connections(sub.get_name());
            let unused: Vec<clap::Arg> = globals
                .iter()
                .filter(|a| a.get_help_heading().is_some_and(|h| !uses.contains(&h)))
                .map(|a| a.clone().hide(true))
                .collect();
            // Clap copies a global setting into a subcommand only where the subcommand
            // has none of that name: a hidden copy put there first is the one it keeps.
            *sub = std::mem::take(sub).args(unused);
        }
        cmd
    }

    /// Parses the process's arguments and environment, or exits with clap's message.
    pub fn parse_args() -> Cli {
        let matches = Cli::command_line().get_matches();
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operator command (read from the command tree, so a new one is covered): its
    /// help names none of the daemon's settings, the connection settings of what it uses,
    /// and none of the others.
    #[test]
    fn operator_commands_show_their_own_flags_and_the_connections_they_use() {
        let mut cmd = Cli::command_line();
        cmd.build();
        let daemon_only: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .filter_map(|a| Some(a.get_env()?.to_string_lossy().into_owned()))
            .collect();
        assert!(daemon_only.contains(&"PLUGIN_WORKERS".to_string()) && daemon_only.contains(&"LANE".to_string()));
        let connection_settings: Vec<(String, String)> = cmd
            .get_arguments()
            .filter(|a| a.is_global_set())
            .filter_map(|a| Some((a.get_help_heading()?.to_string(), a.get_env()?.to_string_lossy().into_owned())))
            .collect();
        let mut leaves = Vec::new();
        collect_leaves(&mut cmd, Vec::new(), &mut leaves);
        assert!(leaves.len() >= 10, "{leaves:?}");
        for (path, help) in leaves {
            let uses = connections(&path[0]);
            let words: Vec<&str> = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
            for env in &daemon_only {
                assert!(!words.contains(&env.as_str()), "`{}` --help shows the daemon's {env}", path.join(" "));
            }
            for (heading, env) in &connection_settings {
                let shown = words.contains(&env.as_str());
                assert_eq!(
                    shown,
                    uses.contains(&heading.as_str()),
                    "`{}` --help and {env} ({heading})",
                    path.join(" ")
                );
            }
        }
    }

    fn collect_leaves(cmd: &mut clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        if cmd.is_hide_set() || cmd.get_name() == "help" {
            return;
        }
        if cmd.get_subcommands().next().is_none() {
            if !path.is_empty() {
                out.push((path, cmd.render_long_help().to_string()));
            }
            return;
        }
        for sub in cmd.get_subcommands_mut() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            collect_leaves(sub, p, out);
        }
    }
}
