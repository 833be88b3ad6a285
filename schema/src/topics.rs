//! Default topic names. Every binary lets the operator rename them; these are the
//! names PostHog uses, so a mixed deployment needs no renaming.

/// Ordinary analytics events.
pub const EVENTS: &str = "events_plugin_ingestion";
/// Events whose `token:distinct_id` went over the per-key rate, or were forced there.
pub const EVENTS_OVERFLOW: &str = "events_plugin_ingestion_overflow";
/// Batches flagged `historical_migration`: back-fills that must not delay live traffic.
pub const EVENTS_HISTORICAL: &str = "events_plugin_ingestion_historical";
/// Session replay, one `$snapshot_items` message per session (and window) per request.
pub const REPLAY: &str = "session_recording_snapshot_item_events";
/// Replay of sessions on the replay-overflow list.
pub const REPLAY_OVERFLOW: &str = "session_recording_snapshot_item_overflow";
/// What ingest could not process, with the reason.
pub const DEAD_LETTER: &str = "events_dead_letter_queue";

/// Written events of teams with export plugins, as plugins see them: what the exports
/// lane consumes (the app server's name for the same stream).
pub const EXPORTS: &str = "clickhouse_events_json";
/// What an export plugin gave up on, with the plugin and its error.
pub const EXPORTS_DEAD_LETTER: &str = "exports_dead_letter_queue";

/// Every topic the pipeline uses, for tooling that creates them.
pub const ALL: [&str; 8] =
    [EVENTS, EVENTS_OVERFLOW, EVENTS_HISTORICAL, REPLAY, REPLAY_OVERFLOW, DEAD_LETTER, EXPORTS, EXPORTS_DEAD_LETTER];

/// The three lanes analytics events travel: capture produces to each lane's topic, and
/// an ingest process consumes one lane (the same names in both binaries' metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Lane {
    Main,
    Overflow,
    Historical,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Overflow => "overflow",
            Lane::Historical => "historical",
        }
    }

    pub fn default_topic(self) -> &'static str {
        match self {
            Lane::Main => EVENTS,
            Lane::Overflow => EVENTS_OVERFLOW,
            Lane::Historical => EVENTS_HISTORICAL,
        }
    }
}
