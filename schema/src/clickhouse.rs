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

/// Where the tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: each table is a (Replacing)MergeTree.
    Single,
    /// A cluster of that name (in the servers' `remote_servers`): each table is
    /// `sharded_<name>`, a Replicated(Replacing)MergeTree on every node, and `<name>`, a
    /// `Distributed` table over them that writes and reads go through.
    Cluster(String),
}

/// How a table keeps its rows.
enum Engine {
    /// Rows with the same sorting key are one row after merges (and with `FINAL`): the
    /// latest, or the highest `version`.
    Replacing { version: Option<&'static str> },
    /// Rows are kept as written (logs and warnings).
    Log,
}

struct TableDdl {
    name: &'static str,
    columns: String,
    engine: Engine,
    /// `PARTITION BY` and `ORDER BY`.
    keys: &'static str,
    /// The `Distributed` table's sharding key: rows that replace each other share it,
    /// so they meet on one shard, where `FINAL` and merges see them together; events go
    /// by distinct id, so one person's events stay on one shard. Deterministic, so a
    /// retried insert splits into the same blocks per shard and the replicas drop them
    /// as repeats.
    shard_by: &'static str,
}

fn tables(flavor: Flavor) -> Vec<TableDdl> {
    let dt = flavor.datetime();
    vec![
        TableDdl {
            name: "events",
            columns: format!(
                "
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
                `$group_4` String"
            ),
            engine: Engine::Replacing { version: None },
            keys: "PARTITION BY toYYYYMM(timestamp) ORDER BY (team_id, toDate(timestamp), event, uuid)",
            shard_by: "sipHash64(distinct_id)",
        },
        TableDdl {
            name: "persons",
            columns: format!(
                "
                id UUID,
                team_id Int64,
                properties String,
                is_identified UInt8,
                created_at {dt},
                version UInt64,
                is_deleted UInt8"
            ),
            engine: Engine::Replacing { version: Some("version") },
            keys: "ORDER BY (team_id, id)",
            shard_by: "sipHash64(toString(id))",
        },
        TableDdl {
            name: "person_distinct_ids",
            columns: String::from(
                "
                team_id Int64,
                distinct_id String,
                person_id UUID,
                version Int64,
                is_deleted UInt8",
            ),
            engine: Engine::Replacing { version: Some("version") },
            keys: "ORDER BY (team_id, distinct_id)",
            shard_by: "sipHash64(distinct_id)",
        },
        TableDdl {
            name: "groups",
            columns: format!(
                "
                team_id Int64,
                group_type_index UInt8,
                group_key String,
                group_properties String,
                created_at {dt},
                version Int64"
            ),
            engine: Engine::Replacing { version: Some("version") },
            keys: "ORDER BY (team_id, group_type_index, group_key)",
            shard_by: "sipHash64(group_key)",
        },
        TableDdl {
            name: "ingestion_warnings",
            columns: format!(
                "
                team_id Int64,
                type String,
                details String,
                timestamp {dt}"
            ),
            engine: Engine::Log,
            keys: "PARTITION BY toYYYYMM(timestamp) ORDER BY (team_id, timestamp)",
            shard_by: "sipHash64(team_id)",
        },
        TableDdl {
            name: "plugin_log_entries",
            columns: format!(
                "
                team_id Int64,
                plugin_config_id Int64,
                level String,
                message String,
                timestamp {dt}"
            ),
            engine: Engine::Log,
            keys: "PARTITION BY toYYYYMM(timestamp) ORDER BY (team_id, plugin_config_id, timestamp)",
            shard_by: "sipHash64(plugin_config_id)",
        },
    ]
}

/// `CREATE` statements for every table, in order.
pub fn create_statements(flavor: Flavor, database: &str, topology: &Topology) -> Vec<String> {
    let mut statements = Vec::new();
    match topology {
        Topology::Single => {
            // Retried inserts of a batch must not show twice: rows are replaced by uuid,
            // and modern servers also drop a repeated insert by its deduplication token.
            let dedup = match flavor {
                Flavor::Legacy => "",
                Flavor::Modern => " SETTINGS non_replicated_deduplication_window = 10000",
            };
            statements.push(format!("CREATE DATABASE IF NOT EXISTS {database}"));
            for t in tables(flavor) {
                let engine = match t.engine {
                    Engine::Replacing { version: Some(v) } => format!("ReplacingMergeTree({v})"),
                    Engine::Replacing { version: None } => "ReplacingMergeTree".to_string(),
                    Engine::Log => "MergeTree".to_string(),
                };
                let settings = if t.name == "events" { dedup } else { "" };
                statements.push(format!(
                    "CREATE TABLE IF NOT EXISTS {database}.{} ({}\n            ) ENGINE = {engine}\n            {}{settings}",
                    t.name, t.columns, t.keys
                ));
            }
        }
        Topology::Cluster(cluster) => {
            statements.push(format!("CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}"));
            for t in tables(flavor) {
                // Replicas of a shard share a ZooKeeper path ({shard} and {replica} are
                // each server's macros); a repeated block is dropped by its checksum, and
                // on modern servers by the insert's deduplication token.
                let path = format!("'/clickhouse/tables/{{shard}}/{database}.{}', '{{replica}}'", t.name);
                let engine = match t.engine {
                    Engine::Replacing { version: Some(v) } => format!("ReplicatedReplacingMergeTree({path}, {v})"),
                    Engine::Replacing { version: None } => format!("ReplicatedReplacingMergeTree({path})"),
                    Engine::Log => format!("ReplicatedMergeTree({path})"),
                };
                statements.push(format!(
                    "CREATE TABLE IF NOT EXISTS {database}.sharded_{name} ON CLUSTER {cluster} ({}\n            ) \
                     ENGINE = {engine}\n            {}",
                    t.columns,
                    t.keys,
                    name = t.name
                ));
                statements.push(format!(
                    "CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} AS {database}.sharded_{name} \
                     ENGINE = Distributed({cluster}, {database}, sharded_{name}, {})",
                    t.shard_by,
                    name = t.name
                ));
            }
        }
    }
    statements
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
        let legacy = create_statements(Flavor::Legacy, "db", &Topology::Single).join("\n");
        assert!(legacy.contains("timestamp DateTime,") && !legacy.contains("DateTime64"));
        let modern = create_statements(Flavor::Modern, "db", &Topology::Single).join("\n");
        assert!(modern.contains("DateTime64(6, 'UTC')") && modern.contains("non_replicated_deduplication_window"));
    }

    #[test]
    fn a_cluster_gets_each_table_replicated_on_every_node_behind_a_distributed_one() {
        let single = create_statements(Flavor::Legacy, "db", &Topology::Single);
        let cluster = create_statements(Flavor::Legacy, "db", &Topology::Cluster("c".into()));
        assert_eq!(cluster[0], "CREATE DATABASE IF NOT EXISTS db ON CLUSTER c");
        let names: Vec<&str> = tables(Flavor::Legacy).iter().map(|t| t.name).collect();
        assert_eq!(single.len(), 1 + names.len());
        assert_eq!(cluster.len(), 1 + 2 * names.len());
        for (i, name) in names.iter().enumerate() {
            let (sharded, distributed) = (&cluster[1 + 2 * i], &cluster[2 + 2 * i]);
            assert!(sharded.starts_with(&format!("CREATE TABLE IF NOT EXISTS db.sharded_{name} ON CLUSTER c (")));
            assert!(
                sharded.contains("Replicated")
                    && sharded.contains(&format!("'/clickhouse/tables/{{shard}}/db.{name}', '{{replica}}'")),
                "{sharded}"
            );
            assert!(
                distributed.contains(&format!(
                    "db.{name} ON CLUSTER c AS db.sharded_{name} ENGINE = Distributed(c, db, sharded_{name}, "
                )),
                "{distributed}"
            );
        }
        assert!(cluster[2].ends_with("sipHash64(distinct_id))"), "one person's events on one shard: {}", cluster[2]);
        assert!(cluster.iter().all(|s| !s.contains("non_replicated_deduplication_window")));
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
