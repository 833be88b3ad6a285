//! Kafka settings: brokers and security, the lane's topic and group, the dead-letter
//! topics, and what the consumer does about a broker's quirks.

use std::time::Duration;

use clap::Args;
use sluice_common::settings::millis;
use sluice_connect::kafka::{KafkaSecurity, Role};

/// Kafka: the lane's topic and group, and the dead-letter topic.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma separated.
    #[arg(
        id = "kafka_hosts",
        long = "kafka-hosts",
        env = "KAFKA_HOSTS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub hosts: String,
    /// Topic to consume; defaults to the lane's topic.
    #[arg(id = "kafka_topic", long = "kafka-topic", env = "KAFKA_TOPIC", global = true)]
    pub topic: Option<String>,
    /// Consumer group; defaults to `sluice-ingest-<lane>`.
    #[arg(id = "kafka_group_id", long = "kafka-group-id", env = "KAFKA_GROUP_ID")]
    pub group_id: Option<String>,
    /// How long the group waits for a silent member (a crashed process) before giving its
    /// partitions to others.
    #[arg(id = "kafka_session_timeout", long = "kafka-session-timeout-ms", env = "KAFKA_SESSION_TIMEOUT_MS", default_value = "10000", value_name = "MS", value_parser = millis)]
    pub session_timeout: Duration,
    /// When a partition's offsets jump forward (the broker did not hand over some
    /// messages), the first search for the missing ones starts this many messages
    /// before them, and each further search twice as far back, down to the log start.
    /// Messages read again are skipped, not processed twice. Needed for brokers that
    /// answer a fetch inside a record batch with the next batch (Tansu 0.6's memory
    /// engine); with Apache Kafka or Redpanda no jump happens and this costs nothing.
    #[arg(
        id = "kafka_gap_rewind_messages",
        long = "kafka-gap-rewind-messages",
        env = "KAFKA_GAP_REWIND_MESSAGES",
        default_value_t = 1_000
    )]
    pub gap_rewind_messages: i64,
    /// A partition that sends nothing for this much of the lane's reading time is
    /// compared with its log's end; if messages wait there past where it is done, it is
    /// sought back as for a gap. Needed for brokers that leave a fetch inside a
    /// partition's last record batch unanswered until another batch comes (Tansu 0.6); with
    /// Apache Kafka or Redpanda nothing waits and it costs one log-end query per quiet
    /// partition per period. 0 turns it off.
    #[arg(id = "kafka_quiet_partition_check", long = "kafka-quiet-partition-check-ms", env = "KAFKA_QUIET_PARTITION_CHECK_MS", default_value = "5000", value_name = "MS", value_parser = millis)]
    pub quiet_partition_check: Duration,
    /// A partition of the lane's topic that has messages past its committed offset and no
    /// commit for this long, while this process is ready and its own assignment unchanged,
    /// is consumed by no one (a broker's group coordinator can leave a partition unassigned
    /// without telling any member): the process then leaves and rejoins the group, so that
    /// the group forms again. Longer than the slowest batch; 0 turns the check off.
    #[arg(id = "kafka_stalled_partition_rejoin", long = "kafka-stalled-partition-rejoin-ms", env = "KAFKA_STALLED_PARTITION_REJOIN_MS", default_value = "60000", value_name = "MS", value_parser = millis)]
    pub stalled_partition_rejoin: Duration,
    /// librdkafka debug contexts (e.g. `consumer,fetch,cgrp`), empty for none.
    #[arg(id = "kafka_debug", long = "kafka-debug", env = "KAFKA_DEBUG", default_value = "", global = true)]
    pub debug: String,
    #[command(flatten)]
    pub security: KafkaSecurity,
    /// Dead-letter topic.
    #[arg(id = "kafka_dlq_topic", long = "kafka-dlq-topic", env = "KAFKA_DLQ_TOPIC", default_value = sluice_schema::topics::DEAD_LETTER, global = true)]
    pub dlq_topic: String,
    /// Written events of teams with export plugins: the event lanes produce to it before
    /// they commit, the exports lane consumes it.
    #[arg(id = "kafka_exports_topic", long = "kafka-exports-topic", env = "KAFKA_EXPORTS_TOPIC", default_value = sluice_schema::topics::EXPORTS, global = true)]
    pub exports_topic: String,
    /// What export plugins gave up on, with the plugin and the error.
    #[arg(id = "kafka_exports_dlq_topic", long = "kafka-exports-dlq-topic", env = "KAFKA_EXPORTS_DLQ_TOPIC", default_value = sluice_schema::topics::EXPORTS_DEAD_LETTER, global = true)]
    pub exports_dlq_topic: String,
}

impl KafkaSettings {
    /// A Kafka client configuration for `role`: brokers, security, pass-through properties.
    pub fn client_config(&self, role: Role) -> anyhow::Result<rdkafka::ClientConfig> {
        let mut config = self.security.client_config(&self.hosts, role)?;
        if !self.debug.is_empty() {
            config.set("debug", &self.debug);
        }
        Ok(config)
    }
}
