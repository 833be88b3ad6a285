//! `sluice-ingest dlq list|replay`: what was dead-lettered, and sending it back.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_connect::kafka::Role;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;
use crate::dlq::header;

/// Which dead letters a command applies to.
pub struct Selection {
    pub since: Option<OffsetDateTime>,
    pub team: Option<i64>,
    /// The exports dead-letter topic instead of the events'.
    pub exports: bool,
    /// Only what this plugin config gave up on.
    pub plugin_config: Option<i64>,
}

impl Selection {
    fn topic<'c>(&self, config: &'c Config) -> &'c str {
        if self.exports {
            &config.kafka.exports_dlq_topic
        } else {
            &config.kafka.dlq_topic
        }
    }
}

/// `2024-05-01T00:00:00Z`, or a duration back from now: `30m`, `2h`, `7d`.
pub fn parse_since(text: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number
        .parse()
        .with_context(|| format!("--since {text:?}: expected RFC 3339 or a duration like 30m, 2h, 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("--since {text:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    Ok(OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
}

/// Reads the whole dead-letter `topic`, up to its end at the time of the call.
fn read_all(config: &Config, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = config
        .kafka
        .client_config(Role::Consumer)?
        .set("group.id", "sluice-ingest-dlq-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata =
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("reading dead-letter topic metadata")?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        bail!("dead-letter topic {topic} does not exist");
    }
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.insert(p, high);
            remaining += 1;
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while remaining > 0 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let end = ends.get(&m.partition()).copied().unwrap_or(0);
                if m.offset() + 1 >= end {
                    remaining -= 1;
                }
                out.push(m.detach());
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}

fn selected(m: &OwnedMessage, s: &Selection) -> bool {
    let failed_at = header(m, "dlq_failed_at").and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let team = header(m, "dlq_team_id").and_then(|t| t.parse::<i64>().ok());
    let plugin = header(m, "dlq_plugin_config_id").and_then(|t| t.parse::<i64>().ok());
    s.since.is_none_or(|since| failed_at.is_some_and(|at| at >= since))
        && s.team.is_none_or(|want| team == Some(want))
        && s.plugin_config.is_none_or(|want| plugin == Some(want))
}

pub async fn list(config: &Config, selection: &Selection) -> anyhow::Result<()> {
    let topic = selection.topic(config);
    let all = read_all(config, topic)?;
    let chosen: Vec<_> = all.iter().filter(|m| selected(m, selection)).collect();
    println!("{} of {} dead letters in {} match", chosen.len(), all.len(), topic);
    for m in chosen {
        let plugin = header(m, "dlq_plugin_config_id").map(|id| format!("\tplugin_config={id}")).unwrap_or_default();
        println!(
            "{}/{}\t{}\tlane={}\tstage={}\tclass={}\tteam={}{}\t{}",
            m.partition(),
            m.offset(),
            header(m, "dlq_failed_at").unwrap_or("?"),
            header(m, "dlq_lane").unwrap_or("?"),
            header(m, "dlq_stage").unwrap_or("?"),
            header(m, "dlq_error_class").unwrap_or("?"),
            header(m, "dlq_team_id").filter(|t| !t.is_empty()).unwrap_or("-"),
            plugin,
            header(m, "dlq_error").unwrap_or("").chars().take(200).collect::<String>(),
        );
    }
    Ok(())
}

/// Publishes each selected dead letter, as it was before it failed, to the topic it came
/// from (or `--to`). An export's dead letter goes back addressed to the plugin that gave
/// up on it, and only that plugin gets it again.
pub async fn replay(config: &Config, selection: &Selection, to: Option<&str>, dry_run: bool) -> anyhow::Result<()> {
    let all = read_all(config, selection.topic(config))?;
    let chosen: Vec<_> = all.iter().filter(|m| selected(m, selection)).collect();
    if dry_run {
        println!("dry run: would replay {} of {} dead letters", chosen.len(), all.len());
        return Ok(());
    }
    let producer: FutureProducer =
        config.kafka.client_config(Role::Producer)?.set("acks", "all").set("enable.idempotence", "true").create()?;
    let default_topic = if selection.exports { config.kafka.exports_topic.clone() } else { config.topic() };
    for m in &chosen {
        let topic = to.or_else(|| header(m, "dlq_source_topic")).unwrap_or(&default_topic);
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for h in h.iter().filter(|h| !h.key.starts_with("dlq_") && !h.key.starts_with("sluice_export_")) {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        if selection.exports {
            use crate::exports::headers as export;
            for (key, from) in [
                (export::TEAM, "dlq_team_id"),
                (export::ONLY_PLUGIN, "dlq_plugin_config_id"),
                (export::ONLY_HOOK, "dlq_hook"),
            ] {
                if let Some(value) = header(m, from).filter(|v| !v.is_empty()) {
                    headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
                }
            }
        }
        let mut record = FutureRecord::to(topic).payload(m.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("replaying to {topic}"))?;
    }
    println!("replayed {} of {} dead letters", chosen.len(), all.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(parse_since("2024-05-01T00:00:00Z").unwrap(), time::macros::datetime!(2024-05-01 00:00:00 UTC));
        let two_hours = OffsetDateTime::now_utc() - parse_since("2h").unwrap();
        assert!((two_hours - time::Duration::hours(2)).abs() < time::Duration::seconds(5));
        assert!(parse_since("2 weeks").is_err());
        assert!(parse_since("5y").is_err());
    }
}
