//! ClickHouse DDL and the column types that depend on the server's version.
//!
//! Production runs modern ClickHouse (`DateTime64(6, 'UTC')`); the test machines have
//! Debian's 18.16, which has no `DateTime64`. The server's version picks the flavor at
//! start, and rows are formatted to match.

use time::macros::format_description;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Before 20.1: second-precision `DateTime`.
    Legacy,
    /// 20.1 and later: `DateTime64(6, 'UTC')`, insert deduplication by token.
    Modern,
}

impl Flavor {
    /// From `SELECT version()`, e.g. `18.16.1` or `24.3.2.23`.
    pub fn from_version(version: &str) -> Flavor {
        match version.trim().split('.').next().and_then(|m| m.parse::<u32>().ok()) {
            Some(major) if major >= 20 => Flavor::Modern,
            _ => Flavor::Legacy,
        }
    }

    pub fn datetime(self) -> &'static str {
        match self {
            Flavor::Legacy => "DateTime",
            Flavor::Modern => "DateTime64(6, 'UTC')",
        }
    }

    /// A UTC time as the column type reads it in `JSONEachRow`: `YYYY-MM-DD hh:mm:ss`,
    /// with `.ffffff` on modern servers. Written by hand: four per event, and the
    /// `time` crate's general formatter was a few percent of ingest's time.
    pub fn format(self, t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        let mut out = String::with_capacity(26);
        let year = t.year();
        if !(0..=9999).contains(&year) {
            // Outside four digits: the general formatter's spelling.
            return self.format_general(t);
        }
        let parts: [(char, u32, usize); 6] = [
            ('-', u8::from(t.month()).into(), 2),
            ('-', t.day().into(), 2),
            (' ', t.hour().into(), 2),
            (':', t.minute().into(), 2),
            (':', t.second().into(), 2),
            ('.', t.microsecond(), 6),
        ];
        push_digits(&mut out, year as u32, 4);
        let shown = if self == Flavor::Modern { 6 } else { 5 };
        for (separator, n, width) in &parts[..shown] {
            out.push(*separator);
            push_digits(&mut out, *n, *width);
        }
        out
    }
}

impl Flavor {
    /// [`Flavor::format`] by the `time` crate's general formatter: its spelling for
    /// years outside four digits, and what the hand-written one is held to.
    fn format_general(self, t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        match self {
            Flavor::Legacy => t.format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")),
            Flavor::Modern => {
                t.format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"))
            }
        }
        .expect("a UTC time always formats")
    }
}

/// `n` in `width` decimal digits, zero-padded (`width` at most 6).
fn push_digits(out: &mut String, mut n: u32, width: usize) {
    let mut buf = [b'0'; 6];
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[..width]).expect("ASCII digits"));
}

/// `CREATE` statements for every table, in order.
pub fn create_statements(flavor: Flavor, database: &str) -> Vec<String> {
    let dt = flavor.datetime();
    // Retried inserts of a batch must not show twice: rows are replaced by uuid, and
    // modern servers also drop a repeated insert by its deduplication token.
    let dedup = match flavor {
        Flavor::Legacy => "",
        Flavor::Modern => " SETTINGS non_replicated_deduplication_window = 10000",
    };
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.events (
                uuid UUID,
                event String,
                properties String,
                timestamp {dt},
                team_id Int64,
                distinct_id String,
                elements_chain String,
                created_at {dt},
                captured_at {dt},
                person_id UUID,
                person_properties String,
                person_created_at {dt},
                person_mode String,
                `$group_0` String,
                `$group_1` String,
                `$group_2` String,
                `$group_3` String,
                `$group_4` String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (team_id, toDate(timestamp), event, uuid){dedup}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.persons (
                id UUID,
                team_id Int64,
                properties String,
                is_identified UInt8,
                created_at {dt},
                version UInt64,
                is_deleted UInt8
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (team_id, id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.person_distinct_ids (
                team_id Int64,
                distinct_id String,
                person_id UUID,
                version Int64,
                is_deleted UInt8
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (team_id, distinct_id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.groups (
                team_id Int64,
                group_type_index UInt8,
                group_key String,
                group_properties String,
                created_at {dt},
                version Int64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (team_id, group_type_index, group_key)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.ingestion_warnings (
                team_id Int64,
                type String,
                details String,
                timestamp {dt}
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (team_id, timestamp)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.plugin_log_entries (
                team_id Int64,
                plugin_config_id Int64,
                level String,
                message String,
                timestamp {dt}
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (team_id, plugin_config_id, timestamp)"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn flavor_from_version() {
        assert_eq!(Flavor::from_version("18.16.1"), Flavor::Legacy);
        assert_eq!(Flavor::from_version("19.17.6.36"), Flavor::Legacy);
        assert_eq!(Flavor::from_version("24.3.2.23"), Flavor::Modern);
        assert_eq!(Flavor::from_version("garbage"), Flavor::Legacy);
    }

    #[test]
    fn times_format_per_flavor() {
        let t = datetime!(2024-05-01 10:00:00.123456 +02:00);
        assert_eq!(Flavor::Legacy.format(t), "2024-05-01 08:00:00");
        assert_eq!(Flavor::Modern.format(t), "2024-05-01 08:00:00.123456");
    }

    #[test]
    fn ddl_uses_the_flavor_types() {
        let legacy = create_statements(Flavor::Legacy, "db").join("\n");
        assert!(legacy.contains("timestamp DateTime,") && !legacy.contains("DateTime64"));
        let modern = create_statements(Flavor::Modern, "db").join("\n");
        assert!(modern.contains("DateTime64(6, 'UTC')") && modern.contains("non_replicated_deduplication_window"));
    }

    #[test]
    fn the_hand_written_format_matches_the_general_one() {
        for t in [
            datetime!(2026-12-02 09:05:07.000_042 UTC),
            datetime!(0001-01-01 00:00:00 UTC),
            datetime!(9999-12-31 23:59:59.999_999_999 UTC),
            datetime!(2024-02-29 12:00:00.5 +05:30),
        ] {
            for flavor in [Flavor::Legacy, Flavor::Modern] {
                assert_eq!(flavor.format(t), flavor.format_general(t), "{t}");
            }
        }
    }
}
